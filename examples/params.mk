# Parameters of the demo (examples/Makefile, `make demo`). A changed value reruns the stages
# that use it (and those after them), nothing else (examples/pipeline.mk: settings/).

# Fine-tuning length on every DATA: steps (no time budget, so every run does the same work);
# the warm-up is shortened to match. On the test volume at the recipe's threshold (0.7) the
# shipped model alone merges (VOI 1.42, adapted Rand error 0.44); fine-tuned this long, it
# segments it almost without error (VOI 0.007, adapted Rand error 0.0004).
DEMO_TRAIN_STEPS := 30
DEMO_TRAIN_ARGS := optim.warmup_steps=5 train.log_every=10 train.checkpoint_every=1000
TRAIN_STEPS := $(DEMO_TRAIN_STEPS)
TRAIN_MINUTES := none

# DATA=synthetic: two volumes from emtools.synth (one to train on, one to segment and score),
# at FIB-25's voxel size so that the shipped FIB-SEM model accepts them. Neurites of ~400 nm
# with 2-voxel membranes; the crop is smaller than the model's own (24,128,128) to be quick.
VOXEL_SIZE_NM := 10,10,10
CELL_DIAMETER_NM := 400
TRAIN_SHAPE_ZYX := 48,160,160
TEST_SHAPE_ZYX := 48,192,192
TRAIN_SEED := 1
TEST_SEED := 2
TRAIN_PATCH_ZYX := 16,96,96

# chunks of the test volume (2x2 here) and their halo; one patch of the model covers a chunk
# with its halo (em-predict would otherwise choose the patch for the whole volume, which here
# is larger than a chunk); the agglomeration thresholds: the sweep and the fixed one (the
# FIB-SEM recipe's 0.7, chosen on gala, never on the volume scored)
CHUNK_ZYX := 48,96,96
HALO_ZYX := 8,20,20
PREDICT_ARGS := --patch 52,160,160 --overlap 0
THRESHOLDS := 0.3 0.5 0.7 0.9
THRESHOLD := 0.7
