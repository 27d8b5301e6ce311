# The Drosophila VNC stack for examples/pipeline.mk: raw/00..19.tif (1024x1024, ~50x4.6x4.6 nm)
# and membranes/*.png (binary, membrane = 1). The neurons are each section's connected
# components of the non-membrane (crop.py --invert --components 2d), for training (the whole
# stack, HELD_OUT never sampled) and for the test block TEST_REGION, cut with its world offset.
# Included by examples/vnc/Makefile and by examples/Makefile (make demo DATA=vnc), after the
# parameters (params.mk) and with EXAMPLES set.
SHARED_DATA ?= $(abspath $(EXAMPLES)../../shared/data)
VNC := $(SHARED_DATA)/drosophila_vnc/stack1
VNC_VOXEL_NM := 50,4.6,4.6
DATA_TITLE := Drosophila VNC (ssTEM, 50x4.6x4.6 nm)
ifneq ($(if $(filter undefined,$(origin MAKECMDGOALS)),all,$(filter-out clean%,$(MAKECMDGOALS))),)
ifeq ($(wildcard $(VNC)/membranes/00.png),)
$(error the VNC stack is not in $(VNC): this example needs ../shared/data beside the project (or SHARED_DATA=/path/to/data))
endif
endif

TRAIN_DEPS := $(VNC)/raw vnc_neurons.h5
TRAIN_ARGS := --config $(EXAMPLES)train_isbi.yaml data.volumes.0.image=$(VNC)/raw \
    data.volumes.0.labels=vnc_neurons.h5:/neurons data.volumes.0.voxel_size_nm=$(VNC_VOXEL_NM) \
    data.volumes.0.label_components=none data.volumes.0.val_region=$(HELD_OUT) $(TRAIN_EXTRA)
DATA_SETTINGS := $(TEST_REGION)
TEST_IMAGE := test.h5:/image
TEST_DEPS := test.h5
TEST_GT := test_gt.h5:/neurons
GT_DEPS := test_gt.h5
HEADS := boundary
EVAL_ARGS := --mode sections

vnc_neurons.h5: $(VNC)/membranes $(EXAMPLES)scripts/crop.py
	$(PROFILE) $(PYTHON) $(EXAMPLES)scripts/crop.py $(VNC)/membranes --voxel-size $(VNC_VOXEL_NM) \
	    --invert --components 2d -o $@:/neurons > /dev/null

test.h5: $(VNC)/raw settings/data $(EXAMPLES)scripts/crop.py
	$(PROFILE) $(PYTHON) $(EXAMPLES)scripts/crop.py $(VNC)/raw --voxel-size $(VNC_VOXEL_NM) \
	    --region $(TEST_REGION) -o $@:/image > /dev/null

test_gt.h5: $(VNC)/membranes settings/data $(EXAMPLES)scripts/crop.py
	$(PROFILE) $(PYTHON) $(EXAMPLES)scripts/crop.py $(VNC)/membranes --voxel-size $(VNC_VOXEL_NM) \
	    --region $(TEST_REGION) --invert --components 2d -o $@:/neurons > /dev/null

.PHONY: clean-data
clean: clean-data
clean-data:
	rm -f vnc_neurons.h5 test.h5 test_gt.h5
