# gala's data for examples/pipeline.mk: training reads the labelled crop (50x100x200; its voxel
# size is not documented, 10 nm isotropic is assumed so the FIB-25 model accepts it) outside
# HELD_OUT; the test block TEST_REGION is cut out with its world offset. Included by
# examples/gala/Makefile and by examples/Makefile (make demo DATA=gala), after the parameters
# (params.mk) and with EXAMPLES set.
SHARED_DATA ?= $(abspath $(EXAMPLES)../../shared/data)
GALA := $(SHARED_DATA)/gala
DATA_TITLE := gala (FIB-SEM, 10 nm assumed)
ifneq ($(if $(filter undefined,$(origin MAKECMDGOALS)),all,$(filter-out clean%,$(MAKECMDGOALS))),)
ifeq ($(wildcard $(GALA)/train-gt.lzf.h5),)
$(error gala is not in $(GALA): this example needs ../shared/data beside the project (or SHARED_DATA=/path/to/data))
endif
endif

TRAIN_DEPS := $(GALA)/train-image.h5 $(GALA)/train-gt.lzf.h5
TRAIN_ARGS := --init fibsem-affinity --config $(EXAMPLES)fibsem_finetune.yaml \
    data.volumes.0.image=$(GALA)/train-image.h5:stack data.volumes.0.labels=$(GALA)/train-gt.lzf.h5:stack \
    data.volumes.0.voxel_size_nm=10,10,10 data.volumes.0.val_region=$(HELD_OUT) \
    data.patch_zyx=$(TRAIN_PATCH_ZYX) $(TRAIN_EXTRA)
DATA_SETTINGS := $(TEST_REGION)
TEST_IMAGE := test.h5:/image
TEST_DEPS := test.h5
TEST_GT := test_gt.h5:/neurons
GT_DEPS := test_gt.h5
HEADS := affinity

test.h5: $(GALA)/train-image.h5 settings/data $(EXAMPLES)scripts/crop.py
	$(PROFILE) $(PYTHON) $(EXAMPLES)scripts/crop.py $(GALA)/train-image.h5:stack --voxel-size 10,10,10 \
	    --region $(TEST_REGION) -o $@:/image > /dev/null

# int32 ids with 0 on the boundaries: kept as they are, as uint64
test_gt.h5: $(GALA)/train-gt.lzf.h5 settings/data $(EXAMPLES)scripts/crop.py
	$(PROFILE) $(PYTHON) $(EXAMPLES)scripts/crop.py $(GALA)/train-gt.lzf.h5:stack --voxel-size 10,10,10 \
	    --region $(TEST_REGION) --dtype uint64 -o $@:/neurons > /dev/null

.PHONY: clean-data
clean: clean-data
clean-data:
	rm -f test.h5 test_gt.h5
