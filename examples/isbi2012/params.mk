# Parameters of the ISBI 2012 example (also used by `make demo DATA=isbi2012`, with the demo's
# short training). A changed value reruns the stages that use it (examples/pipeline.mk).

# Training: examples/train_isbi.yaml for 20 minutes (about 2000 steps of 2x256x256 on a 2-core
# CPU), or TRAIN_STEPS, whichever comes first. TRAIN_EXTRA: more em-train overrides.
TRAIN_MINUTES := 20
TRAIN_STEPS := 100000
TRAIN_EXTRA :=

# The sections training never sees (its val_region) and those segmented and scored (within them).
HELD_OUT := 25:30,:,:
TEST_REGION := 25:30,:,:

# Four chunks of the 5x512x512 block; the halo only in-plane (sections are segmented one by one).
CHUNK_ZYX := 5,256,256
HALO_ZYX := 0,32,32
PREDICT_ARGS :=

# Supervoxels per section; agglomeration thresholds of the sweep, and the fixed one (the middle
# of the sweep, not tuned: the sweep's best is an upper bound, chosen on the scored sections).
WATERSHED_ARGS := --mode 2d
THRESHOLDS := 0.2 0.3 0.4 0.5 0.6 0.7
THRESHOLD := 0.5
