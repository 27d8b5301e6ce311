# The rules every example pipeline shares: train (or fine-tune) a model, then predict, segment
# and score a test volume chunk by chunk, and write a report. Included by examples/Makefile (the
# demo) and examples/*/Makefile, which set the variables below first and give the rules that
# make TRAIN_DEPS, TEST_DEPS and GT_DEPS.
#
#   training data --em-train--> model/last.pt
#   TEST_IMAGE --em-tile split--> chunks/C.h5 --em-predict [C]--> pred/C.h5 --em-watershed [C]--> frags/C.h5
#   frags/*.h5 --em-agglomerate offsets--> offsets.tsv
#   pred/C.h5, offsets.tsv --em-agglomerate edges [C]--> edges/C.tsv
#   edges/*.tsv --em-agglomerate stitch--> lut.tsv (every threshold T of THRESHOLDS)
#   frags/C.h5, lut.tsv --em-agglomerate relabel [C]--> seg_T/C.h5 --em-tile merge--> seg_T.h5
#   seg_THRESHOLD.h5 --em-eval--> scores.json, errors.png
#   seg_*.h5 --em-eval--> sweep.jsonl, sweep.txt (table), sweep_errors.png --plot_sweep.py--> sweep.png
#   all of it --report.py--> report.txt (scores, sweep, time per stage from runs.jsonl, pictures)
#
# [C]: one command per chunk, a pattern rule of its own, so `make -j N` runs chunks in parallel;
# each starts with $(RUN), so a cluster launcher runs them:
#   make -j 64 RUN='srun -N1 -n1 --gres=gpu:1'      (TRAIN_RUN likewise for em-train)
# Every command runs under $(PROFILE) (em-profile run), which appends its wall and CPU time and
# peak memory to runs.jsonl; `em-profile summary runs.jsonl` tabulates them, report.txt per stage.
#
# Variables the including Makefile sets (specs are file.h5:/dataset, see README "Data conventions"):
#   TRAIN_ARGS     em-train's arguments but the length: --config/--init and data.* overrides
#   TRAIN_DEPS     the files training reads (make prerequisites)
#   TRAIN_STEPS    at most this many steps ...
#   TRAIN_MINUTES  ... or minutes (train.minutes; none: no time budget), whichever comes first
#   TEST_IMAGE, TEST_DEPS   the volume to segment (spec) and its file(s)
#   TEST_GT, GT_DEPS        its ground truth
#   DATA_SETTINGS           what decides the test data the including Makefile makes (settings/data;
#                           TRAIN_DATA_SETTINGS: its training data, if it makes some: settings/train)
#   CHUNK_ZYX, HALO_ZYX     em-tile split's chunk and halo (voxels)
#   HEADS                   the model head to predict (affinity, or boundary for 2D models)
#   THRESHOLDS              agglomeration thresholds of the sweep (space-separated, increasing)
#   THRESHOLD               the fixed one (chosen beforehand, never on the test volume): scores.json
# and may set PREDICT_ARGS, WATERSHED_ARGS, EDGES_ARGS, EVAL_ARGS (extra options), TITLE.
#
# Reruns: settings/STAGE holds the values a stage depends on, rewritten only when they change
# (in a params file or on the command line), and the stage depends on it; so a changed setting
# reruns exactly the stages that use it and those after them, nothing else. A dry run (make -n)
# writes no settings; it does cut the test volume into chunks (make remakes chunks.mk, which it
# includes, before anything else) to list the per-chunk commands.

PYTHON ?= python3
# OpenMP threads that wait by sleeping, not spinning: where make -j or other work shares the
# cores, the spinning threads of one torch process take them from the others (on a busy 2-core
# machine em-train's steps took 2.0 s with it, 10.3 s without); little cost on an idle machine
export OMP_WAIT_POLICY ?= PASSIVE
RUN ?=
TRAIN_RUN ?=
PROFILE ?= em-profile run -q --log runs.jsonl --
PICTURES ?= yes
TITLE ?= emtools example
PREDICT_ARGS ?=
WATERSHED_ARGS ?=
EDGES_ARGS ?=
EVAL_ARGS ?=
DATA_SETTINGS ?=
TRAIN_DATA_SETTINGS ?=
EXAMPLES := $(dir $(abspath $(lastword $(MAKEFILE_LIST))))
SCRIPTS := $(EXAMPLES)scripts
# how long training runs, for titles
TRAIN_LENGTH = $(if $(filter none,$(TRAIN_MINUTES)),$(TRAIN_STEPS) steps,$(TRAIN_MINUTES) min (at most $(TRAIN_STEPS) steps))

ifeq ($(filter $(THRESHOLD),$(THRESHOLDS)),)
$(error THRESHOLD ($(THRESHOLD)) must be one of THRESHOLDS ($(THRESHOLDS)))
endif
comma := ,
empty :=
space := $(empty) $(empty)
THRESHOLD_LIST := $(subst $(space),$(comma),$(strip $(THRESHOLDS)))
picture = $(if $(filter yes,$(PICTURES)),$(1) $(2))
MODEL := model/last.pt
# not only clean-* goals: the settings are written and the chunk list is read
BUILDING := $(if $(filter undefined,$(origin MAKECMDGOALS)),all,$(filter-out clean%,$(MAKECMDGOALS)))
DRY_RUN := $(findstring n,$(filter-out -% %=%,$(firstword $(MAKEFLAGS))))

# $(call setting,STAGE,VALUES): write VALUES to settings/STAGE unless it holds them already
setting = $(file >settings/.$(1).new,$(2))$(shell cmp -s settings/.$(1).new settings/$(1) \
    && rm -f settings/.$(1).new || mv -f settings/.$(1).new settings/$(1))
ifneq ($(BUILDING),)
ifeq ($(DRY_RUN),)
$(shell mkdir -p settings)
$(call setting,data,$(DATA_SETTINGS))
$(call setting,train,$(TRAIN_ARGS) train.steps=$(TRAIN_STEPS) train.minutes=$(TRAIN_MINUTES) $(TRAIN_DATA_SETTINGS))
$(call setting,chunks,$(TEST_IMAGE) --chunk $(CHUNK_ZYX) --halo $(HALO_ZYX))
$(call setting,predict,--heads $(HEADS) $(PREDICT_ARGS) pictures=$(PICTURES))
$(call setting,watershed,$(WATERSHED_ARGS) pictures=$(PICTURES))
$(call setting,edges,--until $(lastword $(THRESHOLDS)) $(EDGES_ARGS))
$(call setting,thresholds,$(THRESHOLDS))
$(call setting,eval,$(TEST_GT) $(EVAL_ARGS) threshold=$(THRESHOLD) pictures=$(PICTURES) title=$(TITLE))
endif
endif

# (a dry run in a fresh folder finds no settings: they count as changed)
settings/%: ;

.PHONY: all clean clean-model clean-predict clean-segment clean-scores
.DEFAULT_GOAL := all
# per-chunk files are made by pattern rules; keep them (make deletes intermediate files otherwise)
.SECONDARY:
all: report.txt

# 1. training: a fresh run folder each time (em-train refuses to overwrite a run); the last
#    checkpoint is used (no validation: the test volume is never looked at while training)
$(MODEL): $(TRAIN_DEPS) settings/train
	rm -rf $(@D)
	$(TRAIN_RUN) $(PROFILE) em-train $(TRAIN_ARGS) train.steps=$(TRAIN_STEPS) train.minutes=$(TRAIN_MINUTES) \
	    validation.every=0 -o $(@D) > /dev/null

# 2. the test volume in overlapping chunks named by their global box; their names become make
#    targets through chunks.mk
chunks.txt: $(TEST_DEPS) settings/chunks
	rm -rf chunks
	$(PROFILE) em-tile split $(TEST_IMAGE) --chunk $(CHUNK_ZYX) --halo $(HALO_ZYX) -o chunks -q > $@

chunks.mk: chunks.txt
	echo "CHUNK_NAMES := $$(sed 's|.*/||; s|\.h5$$||' $< | tr '\n' ' ')" > $@

CHUNK_NAMES :=
ifneq ($(BUILDING),)
include chunks.mk
endif
FRAGS := $(CHUNK_NAMES:%=frags/%.h5)
EDGES := $(CHUNK_NAMES:%=edges/%.tsv)

# 3. per chunk: the model's map over the chunk and its halo (the halo is context)
pred/%.h5: chunks/%.h5 $(MODEL) settings/predict
	@mkdir -p $(@D)
	$(RUN) $(PROFILE) em-predict $(MODEL) $< --heads $(HEADS) $(PREDICT_ARGS) -o $@ \
	    $(call picture,--preview,$(@:.h5=.png)) -q > /dev/null

# 4. per chunk: supervoxels of the region the chunk is responsible for (using its halo)
frags/%.h5: pred/%.h5 settings/watershed
	@mkdir -p $(@D)
	$(RUN) $(PROFILE) em-watershed $< $(WATERSHED_ARGS) -o $@ $(call picture,--preview,$(@:.h5=.png)) -q > /dev/null

# 5. globally unique fragment ids; per chunk, the edge table of the contacts it owns
offsets.tsv: $(FRAGS) chunks.txt
	$(PROFILE) em-agglomerate offsets $(FRAGS) -o $@ -q > /dev/null

edges/%.tsv: pred/%.h5 offsets.tsv settings/edges
	@mkdir -p $(@D)
	$(RUN) $(PROFILE) em-agglomerate edges $< --offsets offsets.tsv --until $(lastword $(THRESHOLDS)) $(EDGES_ARGS) \
	    -o $@ -q > /dev/null

# 6. one union-find over all edge tables, one look-up table per threshold
lut.tsv: $(EDGES) settings/thresholds
	$(PROFILE) em-agglomerate stitch $(EDGES) --offsets offsets.tsv -t $(THRESHOLD_LIST) -o $@ -q > /dev/null

# 7. per threshold T and chunk: relabelled fragments; then the assembled volume seg_T.h5
define threshold_rules
seg_$(1)/%.h5: frags/%.h5 lut.tsv
	@mkdir -p $$(@D)
	$$(RUN) $$(PROFILE) em-agglomerate relabel $$< --offsets offsets.tsv --lut lut.tsv -t $(1) -o $$@ -q > /dev/null

seg_$(1).h5: $$(CHUNK_NAMES:%=seg_$(1)/%.h5) chunks.txt
	$$(PROFILE) em-tile merge $$(CHUNK_NAMES:%=seg_$(1)/%.h5) -o $$@:/seg -q > /dev/null
endef
$(foreach t,$(THRESHOLDS),$(eval $(call threshold_rules,$(t))))
SEGS := $(THRESHOLDS:%=seg_%.h5)

# 8. scores at the fixed threshold (and a picture of its split and merge errors over the image),
#    then the whole sweep: one JSON line per threshold, a table with the best marked, a plot
scores.json: seg_$(THRESHOLD).h5 $(GT_DEPS) $(TEST_DEPS) settings/eval
	$(PROFILE) em-eval $< $(TEST_GT) $(EVAL_ARGS) $(call picture,--plot errors.png --image,$(TEST_IMAGE)) -q > $@

sweep.jsonl: $(SEGS) $(GT_DEPS) settings/eval
	$(PROFILE) em-eval $(SEGS) $(TEST_GT) $(EVAL_ARGS) -q > $@

sweep.txt: $(SEGS) $(GT_DEPS) settings/eval
	$(PROFILE) em-eval $(SEGS) $(TEST_GT) $(EVAL_ARGS) --table $(call picture,--plot,sweep_errors.png) -q > $@

sweep.png: sweep.jsonl $(SCRIPTS)/plot_sweep.py
	$(PYTHON) $(SCRIPTS)/plot_sweep.py $< -o $@ --mark $(THRESHOLD) --title '$(TITLE)' > /dev/null

# 9. the report: what was done, the scores, the sweep, time per stage, the pictures
report.txt: scores.json sweep.txt sweep.png $(SCRIPTS)/report.py
	$(PYTHON) $(SCRIPTS)/report.py --title '$(TITLE)' --model $(MODEL) --scores scores.json --threshold $(THRESHOLD) \
	    --sweep sweep.txt --log runs.jsonl -o $@
	@cat $@

clean-model:
	rm -rf model

clean-predict: clean-segment
	rm -rf chunks chunks.txt chunks.mk pred

clean-segment: clean-scores
	rm -rf frags edges offsets.tsv lut.tsv seg_*

clean-scores:
	rm -f scores.json errors.png sweep.jsonl sweep.txt sweep.png sweep_errors.png report.txt

clean: clean-model clean-predict
	rm -rf runs.jsonl settings
