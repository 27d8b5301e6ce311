# FIB-25's data for examples/pipeline.mk: training reads the labelled cube (150 sections of
# 250x250, 10 nm) outside HELD_OUT; the test block TEST_REGION is cut out with its world offset.
# Included by examples/fib25/Makefile and by examples/Makefile (make demo DATA=fib25), after
# the parameters (params.mk) and with EXAMPLES set.
SHARED_DATA ?= $(abspath $(EXAMPLES)../../shared/data)
FIB25 := $(SHARED_DATA)/fib25/train
DATA_TITLE := FIB-25 (FIB-SEM, 10 nm)
ifneq ($(if $(filter undefined,$(origin MAKECMDGOALS)),all,$(filter-out clean%,$(MAKECMDGOALS))),)
ifeq ($(wildcard $(FIB25)/bodies.h5),)
$(error FIB-25 is not in $(FIB25): this example needs ../shared/data beside the project (or SHARED_DATA=/path/to/data))
endif
endif

TRAIN_DEPS := $(FIB25)/image $(FIB25)/bodies.h5
TRAIN_ARGS := --init fibsem-affinity --config $(EXAMPLES)fibsem_finetune.yaml \
    data.volumes.0.image=$(FIB25)/image data.volumes.0.labels=$(FIB25)/bodies.h5:bodies \
    data.volumes.0.voxel_size_nm=10,10,10 data.volumes.0.val_region=$(HELD_OUT) $(TRAIN_EXTRA)
DATA_SETTINGS := $(TEST_REGION)
TEST_IMAGE := test.h5:/image
TEST_DEPS := test.h5
TEST_GT := test_gt.h5:/neurons
GT_DEPS := test_gt.h5
HEADS := affinity

test.h5: $(FIB25)/image settings/data $(EXAMPLES)scripts/crop.py
	$(PROFILE) $(PYTHON) $(EXAMPLES)scripts/crop.py $(FIB25)/image --voxel-size 10,10,10 \
	    --region $(TEST_REGION) -o $@:/image > /dev/null

test_gt.h5: $(FIB25)/bodies.h5 settings/data $(EXAMPLES)scripts/crop.py
	$(PROFILE) $(PYTHON) $(EXAMPLES)scripts/crop.py $(FIB25)/bodies.h5:bodies --voxel-size 10,10,10 \
	    --region $(TEST_REGION) -o $@:/neurons > /dev/null

.PHONY: clean-data
clean: clean-data
clean-data:
	rm -f test.h5 test_gt.h5
