"""What em-profile does differently per kind of model: one dispatch on the spec, no scattered ifs.

Two kinds today:

- ``unet`` (rsunet, rsunet-efficient, unet3d, unet2d): the input is a patch of any size that fits
  the pooling (``--input`` is required); the report has the receptive field and valid-output crop,
  and per-level shares of FLOPs and time.
- ``ffn`` (flood-filling networks, :mod:`emtools.models.ffn_spec`): the input is exactly one field
  of view (FOV), (N, 2, Z, Y, X) with Z,Y,X = ``fov_zyx``, so ``--input`` defaults to the FOV and
  any other size is a one-line error (an FFN is only ever run on its FOV; profiling another size
  would report numbers no tool ever sees). Rates are per FOV (FOV/s over batch sizes 1, 2, 4, 8,
  voxels/s = FOV voxels x FOV/s) and the analytic FLOP count is checked against the spec's own
  ``flops_per_fov``. Sections that do not apply are listed in the report with the reason:
  the valid-output crop (an FFN's output is the whole FOV, same padding) and per-level shares
  (an FFN has one resolution).

To add a kind: subclass :class:`ModelKind`, override what differs, and return it from
:func:`kind_of` (and :func:`kind_named`, which the text report uses on a JSON report).
"""

from __future__ import annotations

from typing import Any

from emtools.errors import EmError

Triple = tuple[int, int, int]


def _zyx(values) -> str:
    return ",".join(map(str, values))


class ModelKind:
    """The U-Net behaviour; :class:`FFNKind` overrides what differs for flood-filling networks."""

    name = "unet"
    sample = "patch"  # what one batch element is, for "<sample>/s"
    default_batches: tuple[int, ...] = (1,)
    rates_by_default = False  # measure samples/s per batch and option even for one batch, no --options
    needs_input = True  # --input is required (an FFN's input is its FOV)
    skipped: dict[str, str] = {}

    def input_zyx(self, spec, requested: Triple | None) -> Triple:
        """The input size to profile; one-line errors for sizes the model cannot take."""
        from emtools.models.geometry import check_input_size

        if requested is None:
            raise EmError(f"--input Z,Y,X is required for {spec.name} (a U-Net takes any size that fits "
                          f"its pooling, e.g. --input 18,160,160)")
        check_input_size(spec, tuple(requested))
        return tuple(requested)  # type: ignore[return-value]

    def geometry(self, spec, input_zyx: Triple) -> dict[str, Any]:
        from emtools.models.geometry import geometry

        return geometry(spec, tuple(input_zyx)).to_dict()

    def geometry_line(self, geo: dict[str, Any]) -> str:
        return (f"# receptive field {_zyx(geo['receptive_field_zyx'])}; valid output "
                f"{_zyx(geo['valid_output_zyx'])} (margins {_zyx(geo['margin_lo_zyx'])} / {_zyx(geo['margin_hi_zyx'])})")

    def spec_flops_per_sample(self, spec, input_zyx: Triple) -> float | None:
        """The forward FLOPs of one batch element as the spec itself counts them (None: no such count)."""
        return None


class FFNKind(ModelKind):
    name = "ffn"
    sample = "FOV"
    default_batches = (1, 2, 4, 8)
    rates_by_default = True
    needs_input = False
    skipped = {
        "valid_output": "an FFN's output covers its whole FOV (same padding); there is no valid-output crop",
        "levels": "an FFN has one resolution, no U-Net levels (see the per-layer table and bottlenecks)",
    }

    def input_zyx(self, spec, requested: Triple | None) -> Triple:
        fov = tuple(spec.fov_zyx)
        if requested is not None and tuple(requested) != fov:
            raise EmError(f"--input {_zyx(requested)} is not the FOV {_zyx(fov)} of {spec.name}: an FFN's input "
                          f"is one FOV; drop --input, or profile another FOV with fov_zyx=Z,Y,X (odd)")
        return fov  # type: ignore[return-value]

    def geometry(self, spec, input_zyx: Triple) -> dict[str, Any]:
        # Same-padded 3D convolutions (the 1x1x1 output conv adds nothing): each widens the field by k-1.
        field = [1 + spec.convolutions * (k - 1) for k in spec.kernel_zyx]
        return {"fov_zyx": list(spec.fov_zyx), "fov_voxels": _voxels(spec.fov_zyx),
                "deltas_zyx": list(spec.deltas_zyx), "receptive_field_zyx": field}

    def geometry_line(self, geo: dict[str, Any]) -> str:
        return (f"# FOV {_zyx(geo['fov_zyx'])} ({geo['fov_voxels']} voxels), deltas {_zyx(geo['deltas_zyx'])}; "
                f"receptive field {_zyx(geo['receptive_field_zyx'])}; input (N, 2, {_zyx(geo['fov_zyx'])}) "
                f"= image and object-map logits")

    def spec_flops_per_sample(self, spec, input_zyx: Triple) -> float | None:
        return spec.flops_per_fov()


def _voxels(zyx) -> int:
    return int(zyx[0]) * int(zyx[1]) * int(zyx[2])


KINDS: dict[str, ModelKind] = {"unet": ModelKind(), "ffn": FFNKind()}


def kind_of(spec) -> ModelKind:
    """The kind of a resolved model spec (its ``arch``)."""
    return KINDS["ffn"] if spec.arch == "ffn" else KINDS["unet"]


def kind_named(name: str | None) -> ModelKind:
    """The kind recorded in a report (reports from before kinds existed are U-Nets)."""
    return KINDS.get(name or "unet", KINDS["unet"])
