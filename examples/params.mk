# Parameters of the example pipeline. Every rule that uses them depends on this file, so
# editing a value here reruns exactly the stages it affects.
SHAPE_ZYX := 32,192,192
VOXEL_SIZE_NM := 40,4,4
SEED := 7
CHUNK_ZYX := 16,96,96
HALO_ZYX := 4,16,16
THRESHOLD := 0.5
