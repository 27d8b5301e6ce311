"""emtools.ffn.chunked: a volume segmented in overlapping chunks and stitched by overlap in the
halo equals the whole-volume segmentation; killed runs redo only missing chunks; chunks shared
by ranks (by arguments and under a real torchrun)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import cc3d
import fastremap
import numpy as np
import pytest

from emtools.errors import EmError
from emtools.ffn.chunked import (
    chunk_file,
    flood_segmenter,
    overlap_edges,
    plan_subvolumes,
    seeds_in_box,
    segment_chunked,
)
from emtools.ranks import Ranks
from emtools.segment.tables import read_edges, read_offsets
from emtools.tiling.geometry import Box

CHUNK, HALO = (10, 20, 20), (2, 4, 4)


def synthetic_image(shape=(20, 40, 40), seed=3, n=7) -> np.ndarray:
    """Thick tubes between random points (most cross chunk borders, some branch into each
    other): +1 inside, -1 outside."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).reshape(3, -1).T.astype(np.float32)
    inside = np.zeros(len(grid), bool)
    for _ in range(n):
        p, q = rng.uniform(0, shape), rng.uniform(0, shape)
        radius = rng.uniform(1.5, 3.0)
        d = q - p
        t = np.clip(((grid - p) @ d) / max(d @ d, 1e-6), 0, 1)
        inside |= np.linalg.norm(grid - (p + t[:, None] * d), axis=1) <= radius
    return np.where(inside.reshape(shape), 1.0, -1.0).astype(np.float32)


def components_segmenter(block, box, state_path):
    """TEST DOUBLE for a flood-filling segmenter: the 6-connected components of image > 0."""
    return cc3d.connected_components(block > 0, connectivity=6)


def whole_volume(image) -> np.ndarray:
    labels, _ = fastremap.renumber(components_segmenter(image, None, None), preserve_zero=True)
    return labels.astype(np.uint64)


def crossing_objects(labels, chunks) -> int:
    """How many objects have voxels in the responsible regions of several chunks."""
    volume = Box.from_shape(labels.shape)
    chunks_of: dict[int, int] = {}
    for c in chunks:
        for label in fastremap.unique(labels[volume.local(c.responsible)]):
            chunks_of[int(label)] = chunks_of.get(int(label), 0) + 1
    return sum(1 for label, n in chunks_of.items() if label and n > 1)


@pytest.fixture(scope="module")
def image():
    return synthetic_image()


# ----------------------------------------------------------------------------- overlap edges

def test_overlap_edges_hand_made():
    a = np.array([1, 1, 1, 1, 0, 2, 2, 0, 3])
    b = np.array([7, 7, 5, 5, 5, 5, 0, 9, 9])
    u, v, score, area = overlap_edges(a, b)
    assert u.tolist() == [1, 1, 2, 3]
    assert v.tolist() == [5, 7, 5, 9]
    assert area.tolist() == [2, 2, 1, 1]
    # |1| = 4, |5| = 4, |7| = 2, |2| = 2, |3| = 1, |9| = 2
    assert np.allclose(score, [1 - 2 / 4, 1 - 2 / 2, 1 - 1 / 2, 1 - 1 / 1])
    u, v, _, _ = overlap_edges(a, b, min_overlap=2)
    assert u.tolist() == [1, 1] and v.tolist() == [5, 7]
    assert all(len(c) == 0 for c in overlap_edges(np.zeros(3, int), np.ones(3, int)))
    with pytest.raises(EmError, match="differ in size"):
        overlap_edges(a, b[:-1])


def test_seeds_in_box():
    box = Box((2, 0, 10), (6, 5, 20))
    assert seeds_in_box([(2, 0, 10), (6, 0, 10), (5, 4, 19), (1, 1, 12), (3, 3, 9)], box) == [(0, 0, 0), (3, 4, 9)]


def test_the_plan_is_em_tiles_chunk_layout():
    chunks = plan_subvolumes((20, 40, 40), CHUNK, HALO)
    assert len(chunks) == 8
    first = chunks[0]
    assert first.responsible.text() == "0:10,0:20,0:20" and first.read.text() == "0:12,0:24,0:24"
    assert chunks[-1].read.text() == "8:20,16:40,16:40"
    # a chunk larger than the volume is the whole axis
    assert len(plan_subvolumes((5, 40, 40), (64, 40, 40), (8, 0, 0))) == 1


# ----------------------------------------------------------------------------- stitching

@pytest.mark.parametrize("threshold", [1.0, 0.5])
def test_chunks_stitched_equal_the_whole_volume_run(image, tmp_path, threshold):
    expected = whole_volume(image)
    chunks = plan_subvolumes(image.shape, CHUNK, HALO)
    assert crossing_objects(expected, chunks) >= 3  # the stitch has work to do
    result = segment_chunked(components_segmenter, image, CHUNK, HALO, str(tmp_path), threshold=threshold)
    assert result.labels.dtype == np.uint64
    assert np.array_equal(result.labels, expected)  # the same ids too: numbered in raster order
    assert len(result.computed) == 8 and result.reused == []
    assert result.segments == expected.max() < result.fragments
    # em-agglomerate's tables are in the work folder, and say what the stitch did
    rows = read_offsets(str(tmp_path / "offsets.tsv"))
    assert [r.spec for r in rows] == [chunk_file(str(tmp_path), c) for c in chunks]
    edges = [read_edges(str(tmp_path / "edges" / f"{c.read.name()}.tsv")) for c in chunks]
    assert sum(len(e.u) for e in edges) == result.edges > 0
    assert {e.score_name for e in edges} == {"overlap"}
    assert sorted(os.listdir(tmp_path)) == ["chunks", "edges", "lut.tsv", "offsets.tsv", "plan.json", "state"]
    assert os.listdir(tmp_path / "state") == []


def test_without_merges_the_chunks_stay_apart(image, tmp_path):
    result = segment_chunked(components_segmenter, image, CHUNK, HALO, str(tmp_path), threshold=0.0)
    assert result.segments > whole_volume(image).max()


def test_pieces_inside_the_neighbours_segment_join_it(tmp_path):
    """Two chunks along x (responsible 0..10 and 10..20, halo 4: both segment x = 6..13). Chunk
    A finds one rod; chunk B cuts it along y into two pieces. Each piece lies wholly inside A's
    rod, so both join it: an oversegmentation in one chunk is undone by its neighbour."""
    image = np.full((4, 6, 20), -1.0, np.float32)
    image[1:3, 1:5, :] = 1.0  # one rod along x, 2 x 4 voxels thick

    def segmenter(block, box, state_path):
        labels = cc3d.connected_components(block > 0, connectivity=6)
        if box.begin[2] > 0:  # chunk B (x from 6) cuts the rod along y: 1 of its 4 rows is its own piece
            labels[(labels > 0) & (np.arange(block.shape[1])[None, :, None] == 4)] = 7
        return labels

    # in the shared part x = 6..13: A's rod u (4 rows), B's pieces v1 (rows 1..3) and v2 (row 4):
    # share(u, v1) = 3/3 -> score 0, share(u, v2) = 1/1 -> score 0: all one object at any threshold > 0
    joined = segment_chunked(segmenter, image, (4, 6, 10), (0, 0, 4), str(tmp_path / "a"))
    assert np.array_equal(joined.labels, (image > 0).astype(np.uint64))
    # no overlap is enough at threshold 0 (score < 0 never holds): A's rod and B's two pieces
    apart = segment_chunked(segmenter, image, (4, 6, 10), (0, 0, 4), str(tmp_path / "b"), threshold=0.0)
    assert apart.segments == 3
    assert len(np.unique(apart.labels[:, :, :10])) == 2 and len(np.unique(apart.labels[:, :, 10:])) == 3


def test_a_piece_mostly_outside_the_other_is_not_joined(tmp_path):
    """A's segment covers the shared part x = 6..13 in rows 1..4; B's covers rows 3..6 there:
    they share 2 of 4 rows, a share of 1/2 of the smaller (score 0.5): joined at threshold 0.6,
    not at 0.5 (score < threshold joins)."""
    image = np.full((4, 8, 20), 1.0, np.float32)

    def segmenter(block, box, state_path):
        labels = np.zeros(block.shape, np.uint8)
        if box.begin[2] == 0:
            labels[:, 1:5, :] = 1
        else:
            labels[:, 3:7, :] = 1
        return labels

    apart = segment_chunked(segmenter, image, (4, 8, 10), (0, 0, 4), str(tmp_path / "a"), threshold=0.5)
    assert apart.segments == 2 and apart.edges == 1
    joined = segment_chunked(segmenter, image, (4, 8, 10), (0, 0, 4), str(tmp_path / "b"), threshold=0.6)
    assert joined.segments == 1


# ----------------------------------------------------------------------------- resuming

def test_a_removed_chunk_is_the_only_one_recomputed(image, tmp_path):
    first = segment_chunked(components_segmenter, image, CHUNK, HALO, str(tmp_path))
    chunks = plan_subvolumes(image.shape, CHUNK, HALO)
    gone = chunk_file(str(tmp_path), chunks[5])
    os.remove(gone)
    calls = []

    def counting(block, box, state_path):
        calls.append(box.text())
        return components_segmenter(block, box, state_path)

    again = segment_chunked(counting, image, CHUNK, HALO, str(tmp_path))
    assert calls == [chunks[5].read.text()]
    assert again.computed == [gone] and len(again.reused) == 7
    assert np.array_equal(again.labels, first.labels)


def test_a_killed_run_resumes_with_the_missing_chunks(image, tmp_path):
    chunks = plan_subvolumes(image.shape, CHUNK, HALO)
    calls = []

    def killed_at_the_fourth(block, box, state_path):
        calls.append(box.text())
        with open(state_path + ".canvas", "w") as f:  # a checkpoint, as flood_fill writes one
            f.write(str(len(calls)))
        if len(calls) == 4:
            raise KeyboardInterrupt
        return components_segmenter(block, box, state_path)

    with pytest.raises(KeyboardInterrupt):
        segment_chunked(killed_at_the_fourth, image, CHUNK, HALO, str(tmp_path))
    done = sorted(os.listdir(tmp_path / "chunks"))
    assert done == sorted(os.path.basename(chunk_file(str(tmp_path), c)) for c in chunks[:3])
    assert os.listdir(tmp_path / "state") == [f"{chunks[3].read.name()}.canvas"]  # the killed chunk's

    resumed_from = []

    def resuming(block, box, state_path):
        resumed_from.append(os.path.exists(state_path + ".canvas"))
        calls.append(box.text())
        return components_segmenter(block, box, state_path)

    calls.clear()
    result = segment_chunked(resuming, image, CHUNK, HALO, str(tmp_path))
    assert calls == [c.read.text() for c in chunks[3:]]
    assert resumed_from == [True, False, False, False, False]
    assert np.array_equal(result.labels, whole_volume(image))
    assert os.listdir(tmp_path / "state") == []


def test_a_work_folder_of_another_run_is_refused(image, tmp_path):
    segment_chunked(components_segmenter, image, CHUNK, HALO, str(tmp_path), fingerprint={"model": "a"})
    with pytest.raises(EmError, match=r"holds chunks of another run \(different fingerprint\)"):
        segment_chunked(components_segmenter, image, CHUNK, HALO, str(tmp_path), fingerprint={"model": "b"})
    with pytest.raises(EmError, match=r"different chunk_zyx, halo_zyx"):
        segment_chunked(components_segmenter, image, (10, 10, 10), (1, 1, 1), str(tmp_path), fingerprint={"model": "a"})


def test_bad_input(image, tmp_path):
    with pytest.raises(EmError, match="must be 3D"):
        segment_chunked(components_segmenter, image[0], CHUNK, HALO, str(tmp_path / "a"))
    with pytest.raises(EmError, match="halo must be zero or positive"):
        segment_chunked(components_segmenter, image, CHUNK, (-1, 0, 0), str(tmp_path / "b"))
    with pytest.raises(EmError, match="stitch threshold"):
        segment_chunked(components_segmenter, image, CHUNK, HALO, str(tmp_path / "c"), threshold=1.5)
    with pytest.raises(EmError, match="returned shape"):
        segment_chunked(lambda block, box, state: block[:-1] > 0, image, CHUNK, HALO, str(tmp_path / "d"))
    with pytest.raises(EmError, match="float"):
        segment_chunked(lambda block, box, state: block, image, CHUNK, HALO, str(tmp_path / "e"))
    with pytest.raises(EmError, match="still missing"):
        segment_chunked(components_segmenter, image, CHUNK, HALO, str(tmp_path / "f"), ranks=Ranks(0, 2),
                        wait_timeout_s=0.2, poll_s=0.05)


# ----------------------------------------------------------------------------- ranks

def test_two_ranks_share_the_chunks(image, tmp_path):
    chunks = plan_subvolumes(image.shape, CHUNK, HALO)
    work = str(tmp_path)
    other = segment_chunked(components_segmenter, image, CHUNK, HALO, work, ranks=Ranks(1, 2))
    assert other.labels is None
    assert other.computed == [chunk_file(work, c) for c in chunks[1::2]]
    main = segment_chunked(components_segmenter, image, CHUNK, HALO, work, ranks=Ranks(0, 2), poll_s=0.05)
    assert main.computed == [chunk_file(work, c) for c in chunks[0::2]] and main.reused == []
    assert np.array_equal(main.labels, whole_volume(image))


RANK_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import cc3d, numpy as np
    from emtools.ffn.chunked import segment_chunked

    image, work = np.load(sys.argv[1]), sys.argv[2]
    segment = lambda block, box, state: cc3d.connected_components(block > 0, connectivity=6)
    result = segment_chunked(segment, image, (10, 20, 20), (2, 4, 4), work, poll_s=0.05, wait_timeout_s=120)
    rank = int(os.environ["RANK"])
    with open(os.path.join(work, f"rank{rank}.json"), "w") as f:
        json.dump({"computed": result.computed, "labels": result.labels is not None}, f)
    if result.labels is not None:
        np.save(os.path.join(work, "labels.npy"), result.labels)
""")


def test_two_ranks_under_torchrun(image, tmp_path):
    np.save(tmp_path / "image.npy", image)
    (tmp_path / "ranks.py").write_text(RANK_SCRIPT)
    work = tmp_path / "work"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(tmp_path / "ranks.py"), str(tmp_path / "image.npy"), str(work)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    chunks = plan_subvolumes(image.shape, CHUNK, HALO)
    for rank in (0, 1):
        record = json.loads((work / f"rank{rank}.json").read_text())
        assert record["computed"] == [chunk_file(str(work), c) for c in chunks[rank::2]]
        assert record["labels"] == (rank == 0)
    assert np.array_equal(np.load(work / "labels.npy"), whole_volume(image))


# ----------------------------------------------------------------------------- with flood_fill

def test_the_real_flood_fill_in_chunks_reunites_objects(tmp_path):
    """flood_fill per chunk with a TEST DOUBLE network (the perfect one of test_ffn_consensus),
    two slabs that cross the chunk border along y; with and without consensus."""
    from emtools.ffn.inference import FloodOptions
    from test_ffn_consensus import oracle_network

    image = np.full((11, 28, 16), -1.0, np.float32)
    image[1:10, 1:27, 2:6] = 1.0
    image[1:10, 1:27, 9:14] = 1.0
    truth = np.zeros(image.shape, np.uint64)
    truth[1:10, 1:27, 2:6] = 1
    truth[1:10, 1:27, 9:14] = 2
    options = FloodOptions(min_size=10, batch=4)

    def seeds(block, mask, box):
        inside = block > 0 if mask is None else (block > 0) & mask
        return [tuple(p) for p in np.argwhere(inside)[:: 97].tolist()
                if all(3 <= c < s - 3 for c, s in zip(p, block.shape))]

    for consensus, folder in ((False, "plain"), (True, "consensus")):
        segment = flood_segmenter(oracle_network, (7, 7, 7), (2, 2, 2), options, seeds, consensus=consensus,
                                  consensus_options={"fov_offset_zyx": (0, 1, 0)})
        result = segment_chunked(segment, image, (11, 14, 16), (0, 4, 0), str(tmp_path / folder))
        assert len(result.computed) == 2
        assert np.array_equal(result.labels, truth), folder
    # a restrictor over the whole image, cut per chunk: the right slab is not segmented
    segment = flood_segmenter(oracle_network, (7, 7, 7), (2, 2, 2), options, seeds, restrictor=truth != 2)
    result = segment_chunked(segment, image, (11, 14, 16), (0, 4, 0), str(tmp_path / "restricted"))
    assert np.array_equal(result.labels, (truth == 1).astype(np.uint64))
    # one seed list over the whole image, cut per chunk: a seed in each slab of each chunk
    listed = [(5, 5, 3), (5, 5, 11), (5, 22, 3), (5, 22, 11)]
    segment = flood_segmenter(oracle_network, (7, 7, 7), (2, 2, 2), options,
                              lambda block, mask, box: seeds_in_box(listed, box))
    result = segment_chunked(segment, image, (11, 14, 16), (0, 4, 0), str(tmp_path / "listed"))
    assert np.array_equal(result.labels, truth)
    with pytest.raises(EmError, match="needs a seed policy"):
        flood_segmenter(oracle_network, (7, 7, 7), (2, 2, 2), options)
