# Parameters of the FIB-25 example (also used by `make demo DATA=fib25`, with the demo's short
# training). A changed value reruns the stages that use it (examples/pipeline.mk).

# Training: the README's recipe, 30 minutes of fine-tuning (em-train stops when the time is
# spent or at TRAIN_STEPS, whichever comes first, and runs its schedule over that time; about
# 1000 steps of the model's 24x128x128 crop on a 2-core CPU, far more on a GPU). TRAIN_EXTRA:
# more em-train overrides (e.g. data.patch_zyx=16,96,96).
TRAIN_MINUTES := 30
TRAIN_STEPS := 100000
TRAIN_EXTRA :=

# The block training never sees (its val_region) and the block segmented and scored (within it).
HELD_OUT := 100:150,:,:
TEST_REGION := 100:150,:,:

# Four chunks of the 50x250x250 block; one patch of the model covers a chunk with its halo.
CHUNK_ZYX := 50,128,128
HALO_ZYX := 8,16,16
# --tta 4: the recipe's four flips averaged (README: lower VOI at 0.7 on FIB-25 and on gala)
PREDICT_ARGS := --patch 56,192,192 --overlap 0 --tta 4

# The sweep, and the recipe's fixed threshold (chosen on gala, never on FIB-25).
THRESHOLDS := 0.3 0.4 0.5 0.6 0.7 0.8 0.9
THRESHOLD := 0.7
