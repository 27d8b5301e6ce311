# Parameters of the VNC example (also used by `make demo DATA=vnc`, with the demo's short
# training). A changed value reruns the stages that use it (examples/pipeline.mk).

# Training: examples/train_isbi.yaml for 20 minutes, or TRAIN_STEPS, whichever comes first.
# TRAIN_EXTRA: more em-train overrides.
TRAIN_MINUTES := 20
TRAIN_STEPS := 100000
TRAIN_EXTRA :=

# The sections training never sees (its val_region) and those segmented and scored (within them).
HELD_OUT := 15:20,:,:
TEST_REGION := 15:20,:,:

# Four chunks of the 5x1024x1024 block; the halo only in-plane (sections are segmented one by one).
CHUNK_ZYX := 5,512,512
HALO_ZYX := 0,32,32
PREDICT_ARGS :=

# Supervoxels per section; agglomeration thresholds of the sweep, and the fixed one (ISBI's,
# not tuned here: the sweep's best is an upper bound, chosen on the scored sections).
WATERSHED_ARGS := --mode 2d
THRESHOLDS := 0.2 0.3 0.4 0.5 0.6 0.7
THRESHOLD := 0.5
