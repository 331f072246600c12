# dreamstep: `make play` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# A plain `torch` requirement can pull a multi-GB CUDA build; pin the CPU build.
TORCH  ?= torch==2.13.0
EXTRAS ?= dev,games,minari
ARGS   ?=

.PHONY: setup play test lint bench-engine dataset dataset-revisit dataset-still dataset-random dataset-teacher dataset-lava teacher-report teacher-long teacher-long-curve rl external \
	dataset-doom-heldout external-report variants variants-long compare stage2 stage2-long stage2-grid clean-venv

$(VENV)/.installed: pyproject.toml Makefile
	bash .ci/system-deps.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[$(EXTRAS)]"
	touch $@

setup: $(VENV)/.installed

play: setup
	$(PY) play.py $(ARGS)

# worksteal: xdist hands out single tests, not whole files (measured on one host: 527 s against 593 s with loadfile)
test: setup
	$(PY) -m pytest -q -p no:cacheprovider -n 2 --dist worksteal --durations=15 tests

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

bench-engine: setup
	$(PY) -m benchmarks.engine --out benchmarks/results/engine.json

# The default-game dataset (200+ episodes, explorer policy) regenerated from seeds.
dataset: setup
	$(PY) -m world.record --world adventure --policy explorer --episodes 240 --steps 256 \
		--seed 0 --out data/datasets/adventure-explorer-v0

# Returns to places that left the view (the long-context teacher's data): the explorer walks its
# latest moves back at 30% of its segments (--policy-arg retrace), same seeds as `make dataset`.
dataset-revisit: setup
	$(PY) -m world.record --world adventure --policy explorer --policy-arg retrace=0.3 --policy-arg retrace_len=16 \
		--episodes 240 --steps 256 --seed 0 --out data/datasets/adventure-revisit-v0 \
		$(if $(wildcard data/datasets/adventure-revisit-v0),--resume)

# Still views (the long teacher's controls where the view stands still): the retracing explorer drawn
# to the map's edges, where the camera stops and only the player's sprite shows a move
# (--policy-arg still_weight), seeds from 5000 (apart from the other datasets).
dataset-still: setup
	$(PY) -m world.record --world adventure --policy explorer --policy-arg retrace=0.3 --policy-arg retrace_len=16 \
		--policy-arg still_weight=8 --policy-arg blocked_weight=1 \
		--episodes 160 --steps 256 --seed 5000 --out data/datasets/adventure-still-v0 \
		$(if $(wildcard data/datasets/adventure-still-v0),--resume)

# Uniform random keys, a new key every step (the long teacher's controls where keys change, as in the
# evaluation's random-policy episodes), seeds from 20000 (apart from the other datasets).
dataset-random: setup
	$(PY) -m world.record --world adventure --policy random \
		--episodes 160 --steps 256 --seed 20000 --out data/datasets/adventure-random-v0 \
		$(if $(wildcard data/datasets/adventure-random-v0),--resume)

# The teacher's dataset: twice the episodes (the first 240 are those of `make dataset`).
dataset-teacher: setup
	$(PY) -m world.record --world adventure --policy explorer --episodes 480 --steps 256 \
		--seed 0 --out data/datasets/adventure-explorer480-v0

# Episode ends for the reward/termination heads: lava in every room, an explorer that seeks ends.
dataset-lava: setup
	$(PY) -m world.record --world adventure --policy explorer --setting lava_rooms=1.0 \
		--policy-arg end_penalty=-50 --episodes 240 --steps 256 --seed 500000 --out data/datasets/adventure-lava-v0
	$(PY) -m world.record --world adventure --policy explorer --setting lava_rooms=1.0 \
		--policy-arg end_penalty=-50 --episodes 720 --steps 256 --seed 500240 --out data/datasets/adventure-lavamore-v0

# The shipped teacher's fidelity report (benchmarks/results/teacher.{json,md,png}).
CFG ?= 1.0
teacher-report: setup
	$(PY) -m trainer.evaluate --checkpoint assets/checkpoints/adventure_teacher.safetensors --world adventure \
		--episodes 16 --steps 48 --cfg $(CFG) --out benchmarks/results/teacher.json

# The long-context teacher (docs/TRAINING_LOG.md): one piece of MINUTES of training; the same command
# continues the run (Ctrl-C or SIGTERM also end a piece with a checkpoint). Its quality curve is
# measured beside it by `make teacher-long-curve` (every 10 minutes, until the run's final checkpoint).
MINUTES ?= 120
teacher-long: setup
	test -d data/datasets/adventure-revisit-v0 || $(MAKE) dataset-revisit
	$(PY) -m trainer teacher --config assets/configs/adventure_teacher_long.yaml --minutes $(MINUTES)

teacher-long-curve: setup
	$(PY) -m evaluation.curve --run runs/adventure_teacher_long --out benchmarks/results/teacher_long_curve.json \
		--baseline assets/checkpoints/adventure_teacher.safetensors --log docs/TRAINING_LOG.md --watch 10

# The RL benchmark (issue 26): PPO trained in the real game and in the dream with the same settings and
# steps (benchmarks/rl.yaml), every agent scored in the real game on held-out seeds; the transfer
# ratio, the equal-real-data comparison (the world model's datasets are recorded first if missing) and
# where transfer is lost (benchmarks/transfer.py).
rl: setup
	test -d data/datasets/adventure-explorer-v0 || $(MAKE) dataset
	test -d data/datasets/adventure-explorer480-v0 || $(MAKE) dataset-teacher
	test -d data/datasets/adventure-lavamore-v0 || $(MAKE) dataset-lava
	$(PY) -m benchmarks.rl --out benchmarks/results/rl.json --resume

# The external-game world model (ViZDoom "basic", frame_skip 2): the whole pipeline on this CPU,
# then the shipped model's report on held-out recorded episodes (ViZDoom has no get_state).
EXTERNAL_WORLD := gym:VizdoomBasic-v1
external: setup
	$(PY) -m trainer.pipeline --world $(EXTERNAL_WORLD) --out runs/doom_basic --preset cpu-external --setting frame_skip=2

dataset-doom-heldout: setup
	$(PY) -m world.record --world $(EXTERNAL_WORLD) --setting frame_skip=2 --policy explorer --episodes 80 \
		--steps 150 --seed 1000000 --out data/datasets/vizdoombasic-heldout-v0 \
		$(if $(wildcard data/datasets/vizdoombasic-heldout-v0),--resume)

external-report: dataset-doom-heldout
	mkdir -p docs/media
	$(PY) -m trainer.evaluate --checkpoint assets/checkpoints/doom_basic_dream.safetensors --world $(EXTERNAL_WORLD) \
		--idm assets/checkpoints/doom_basic_idm.safetensors --rollouts data/datasets/vizdoombasic-heldout-v0 \
		--sampler consistency --steps 2 --first-frame-steps 4 --episodes 48 --long-episodes 4 --long-horizon 64 \
		--strip docs/media/external_strip.png --out benchmarks/results/external.json

# The few-step variants of docs/ALGORITHMS.md section 5 distilled from the shipped teacher on this CPU
# (CF++ frame-2/frame-1: causal CD + DMD; the ablation: frame-wise causal ODE + the same DMD;
# the CF baseline: chunk-wise causal ODE + DMD)
# (each command resumes its run and returns at once when the run is complete), then exported to
# assets/checkpoints/adventure_<variant>; `make compare` measures them all in one run.
CD_STEPS  ?= 500
ODE_STEPS ?= 500
ODE_SAMPLES ?= 1024
DMD_STEPS ?= 80
variants: setup
	test -d data/datasets/adventure-explorer-v0 || $(MAKE) dataset
	$(PY) -m trainer cd --config assets/configs/adventure_cd_frame2.yaml --set train.steps=$(CD_STEPS) --set train.eval_every=100 \
		--set train.ckpt_every=100 --set train.keep_checkpoints=20
	$(PY) -m trainer dmd --config assets/configs/adventure_cfpp_frame2.yaml --set train.steps=$(DMD_STEPS)
	$(PY) -m trainer ode --config assets/configs/adventure_ode_frame2.yaml --set train.steps=$(ODE_STEPS) --set train.eval_every=100 \
		--set ode.samples=$(ODE_SAMPLES)
	$(PY) -m trainer dmd --config assets/configs/adventure_ode_dmd_frame2.yaml --set train.steps=$(DMD_STEPS)
	$(PY) -m trainer dmd --config assets/configs/adventure_cfpp_frame1.yaml --set train.steps=$(DMD_STEPS)
	$(PY) -m trainer ode --config assets/configs/adventure_ode_chunk4.yaml --set train.steps=$(ODE_STEPS) --set train.eval_every=100 \
		--set ode.samples=$(ODE_SAMPLES)
	$(PY) -m trainer dmd --config assets/configs/adventure_cf_chunk4.yaml --set train.steps=$(DMD_STEPS)
	for v in cfpp_frame2 cfpp_frame1 ode_frame2 ode_dmd_frame2 cf_chunk4; do \
		dir=assets/checkpoints; [ $$v = ode_frame2 ] && dir=runs/exports; \
		$(PY) -m trainer.export --run runs/adventure_$$v --name adventure_$$v --dtype fp16 --out-dir $$dir --force \
			--command "make variants CD_STEPS=$(CD_STEPS) ODE_STEPS=$(ODE_STEPS) ODE_SAMPLES=$(ODE_SAMPLES) DMD_STEPS=$(DMD_STEPS)" || exit 1; \
	done

# CF++ frame-2 and frame-1 from the long-context teacher (issue 24; assets/configs/*_long.yaml): causal CD
# on 40-frame clips of the revisit dataset, then DMD on 40-frame self-rollouts. Each command resumes
# its run (a complete one returns at once). Each student is evaluated (python -m evaluation, 16 episodes,
# 16 revisit and 16 long episodes) and exported with its report to runs/exports: not shipped, because
# the frame-2 student falls apart in long sessions (docs/TRAINING_LOG.md, benchmarks.dream --session-strip).
variants-long: setup
	test -d data/datasets/adventure-revisit-v0 || $(MAKE) dataset-revisit
	$(PY) -m trainer cd --config assets/configs/adventure_cd_frame2_long.yaml
	$(PY) -m trainer dmd --config assets/configs/adventure_cfpp_frame2_long.yaml
	$(PY) -m trainer dmd --config assets/configs/adventure_cfpp_frame1_long.yaml
	mkdir -p runs/exports
	for v in cfpp_frame2 cfpp_frame1; do \
		$(PY) -m evaluation --world adventure --episodes 16 --revisit-episodes 16 --long-episodes 16 \
			--checkpoint runs/adventure_$${v}_long --out runs/exports/student_$${v}_long.json || exit 1; \
		$(PY) -m trainer.export --run runs/adventure_$${v}_long --name adventure_$${v}_long --dtype fp16 --out-dir runs/exports --force \
			--eval runs/exports/student_$${v}_long.json --command "make variants-long" || exit 1; \
	done

compare: setup
	$(PY) -m benchmarks.compare --out benchmarks/results/compare.json

# Stage 2 at equal flow-map error: every checkpoint of the causal CD run of `make variants` against
# the causal ODE student `make variants` exports to runs/exports (the ODE-only student is not shipped:
# it is an intermediate of the ablation, and the 120 MB budget holds the five playable variants);
# `make compare` (or its --render-only) adds it to docs/RESULTS.md.
stage2: setup
	$(PY) -m benchmarks.stage2 --out benchmarks/results/stage2.json

# The committed stage2.json: the same CD run (the first 500 steps of `make variants`) resumed to
# CD_LONG_STEPS (its cosine decay restarts at step 500), so the claim's budget (0.35 x the ODE
# student's teacher forwards, about 1,075 CD steps) is measured, not extrapolated.
CD_LONG_STEPS ?= 1100
CD_LONG := $(PY) -m trainer cd --config assets/configs/adventure_cd_frame2.yaml --set run_dir=runs/adventure_cd_frame_long \
	--set train.eval_every=100 --set train.ckpt_every=100 --set train.keep_checkpoints=20
stage2-long: setup
	$(CD_LONG) --set train.steps=$(CD_STEPS)
	$(CD_LONG) --set train.steps=$(CD_LONG_STEPS)
	$(PY) -m benchmarks.stage2 --cd-run runs/adventure_cd_frame_long --out benchmarks/results/stage2.json

# Causal CD on a coarser grid (GRID points instead of 48, target EMA decay 0.95 instead of 0.99,
# lr 2e-4: the settings that worked for the Doom dream), planned from the start for the claim's
# budget (1,100 steps = 17,600 teacher forwards), measured against the same causal ODE student
# into stage2_grid$(GRID).json; `make compare` (or its --render-only) renders every stage2*.json.
GRID ?= 8
stage2-grid: setup
	test -d data/datasets/adventure-explorer-v0 || $(MAKE) dataset
	$(PY) -m trainer cd --config assets/configs/adventure_cd_frame2.yaml --set run_dir=runs/adventure_cd_frame_n$(GRID) \
		--set train.steps=1100 --set train.lr=0.0002 --set train.eval_every=100 --set train.ckpt_every=100 \
		--set train.keep_checkpoints=20 --set loss.n_points=$(GRID) --set loss.target_decay=0.95
	$(PY) -m benchmarks.stage2 --cd-run runs/adventure_cd_frame_n$(GRID) --out benchmarks/results/stage2_grid$(GRID).json

clean-venv:
	rm -rf $(VENV)
