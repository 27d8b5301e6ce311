# ISBI 2012's data for examples/pipeline.mk: training reads the 30 labelled PNG sections
# (512x512, 50x4x4 nm; labels 0 = membrane, 255 = cell interior) outside HELD_OUT; the test
# sections TEST_REGION are cut out with their world offset, and their ground truth is the
# connected components of each section's interior (as em-train's label_components 2d makes it).
# Included by examples/isbi2012/Makefile and by examples/Makefile (make demo DATA=isbi2012),
# after the parameters (params.mk) and with EXAMPLES set.
SHARED_DATA ?= $(abspath $(EXAMPLES)../../shared/data)
ISBI := $(SHARED_DATA)/isbi2012
DATA_TITLE := ISBI 2012 (ssTEM, 50x4x4 nm)
ifneq ($(if $(filter undefined,$(origin MAKECMDGOALS)),all,$(filter-out clean%,$(MAKECMDGOALS))),)
ifeq ($(wildcard $(ISBI)/label/0.png),)
$(error ISBI 2012 is not in $(ISBI): this example needs ../shared/data beside the project (or SHARED_DATA=/path/to/data))
endif
endif

TRAIN_DEPS := $(ISBI)/image $(ISBI)/label
TRAIN_ARGS := --config $(EXAMPLES)train_isbi.yaml data.volumes.0.image=$(ISBI)/image \
    data.volumes.0.labels=$(ISBI)/label data.volumes.0.val_region=$(HELD_OUT) $(TRAIN_EXTRA)
DATA_SETTINGS := $(TEST_REGION)
TEST_IMAGE := test.h5:/image
TEST_DEPS := test.h5
TEST_GT := test_gt.h5:/neurons
GT_DEPS := test_gt.h5
HEADS := boundary
EVAL_ARGS := --mode sections

test.h5: $(ISBI)/image settings/data $(EXAMPLES)scripts/crop.py
	$(PROFILE) $(PYTHON) $(EXAMPLES)scripts/crop.py $(ISBI)/image --voxel-size 50,4,4 \
	    --region $(TEST_REGION) -o $@:/image > /dev/null

test_gt.h5: $(ISBI)/label settings/data $(EXAMPLES)scripts/crop.py
	$(PROFILE) $(PYTHON) $(EXAMPLES)scripts/crop.py $(ISBI)/label --voxel-size 50,4,4 \
	    --region $(TEST_REGION) --components 2d -o $@:/neurons > /dev/null

.PHONY: clean-data
clean: clean-data
clean-data:
	rm -f test.h5 test_gt.h5
