# Parameters of the gala example (also used by `make demo DATA=gala`, with the demo's short
# training). A changed value reruns the stages that use it (examples/pipeline.mk).

# Training: the FIB-SEM recipe's 30 minutes of fine-tuning (see examples/fib25/params.mk). The
# training block (34x100x200) is too thin for the model's own crop (24x128x128): TRAIN_PATCH_ZYX.
TRAIN_MINUTES := 30
TRAIN_STEPS := 100000
TRAIN_PATCH_ZYX := 24,96,96
TRAIN_EXTRA :=

# The block training never sees (its val_region) and the block segmented and scored (within it).
HELD_OUT := 34:50,:,:
TEST_REGION := 34:50,:,:

# Two chunks of the 16x100x200 block; one patch of the model covers a chunk with its halo.
CHUNK_ZYX := 16,100,100
HALO_ZYX := 4,16,16
# --tta 4: the recipe's four flips averaged (README: lower VOI at 0.7 on FIB-25 and on gala)
PREDICT_ARGS := --patch 20,128,160 --overlap 0 --tta 4

# The sweep, and the recipe's fixed threshold (chosen on gala with the model before any
# fine-tuning on it; see the README).
THRESHOLDS := 0.3 0.4 0.5 0.6 0.7 0.8 0.9
THRESHOLD := 0.7
