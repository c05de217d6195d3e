# Every target creates or refreshes .venv on first use, so each is one command on a fresh machine.
STACK ?= dev
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: plan preflight verify capacity serve simulator test test-infra test-app test-charts bench soak reliability chart-scan checkov lint format image helm lock clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

plan: $(STAMP)  ## offline plan of a stack under Pulumi's mock runtime: make plan STACK=prod
	$(PY) -m infra.plan --stack $(STACK) $(ARGS)

preflight: $(STAMP)  ## what a real pulumi up needs on this machine and account, creating nothing: make preflight STACK=prod
	$(PY) -m infra.preflight --stack $(STACK) $(ARGS)

verify: $(STAMP)  ## a deployed stack's live resources against its settings: make verify STACK=prod
	$(PY) -m infra.verify --stack $(STACK) $(ARGS)

capacity: $(STAMP)  ## pods, nodes, cache and monthly cost for a load: make capacity STACK=prod RPS=200 ARGS="--json"
	$(if $(RPS),,$(error make capacity needs RPS=<requests per second>, e.g. make capacity STACK=prod RPS=200))
	$(PY) -m infra.capacity --stack $(STACK) --rps $(RPS) $(ARGS)

serve: $(STAMP)  ## the gateway on 127.0.0.1:8080 with embedded defaults
	$(PY) -m app

simulator: $(STAMP)  ## the OpenAI-compatible provider simulator on its own
	$(PY) -m app.simulator

helm:
	@scripts/ensure-helm >/dev/null

checkov:  ## checkov (the chart's hardening scan) in its own venv, .tools/checkov-venv
	@scripts/ensure-checkov >/dev/null

test: $(STAMP) helm checkov  ## the whole suite
	PATH="$(CURDIR)/.tools/bin:$$PATH" $(PY) -m pytest $(ARGS)

test-infra: $(STAMP)
	$(PY) -m pytest tests/infra $(ARGS)

test-app: $(STAMP)
	$(PY) -m pytest tests/app $(ARGS)

test-charts: $(STAMP) helm checkov
	PATH="$(CURDIR)/.tools/bin:$$PATH" $(PY) -m pytest tests/charts $(ARGS)

bench: $(STAMP)  ## load benchmark of the gateway, with ratios to a bare proxy; writes bench/results.json
	$(PY) -m bench $(ARGS)

soak: $(STAMP)  ## 5-minute memory soak of the gateway (RSS may grow <= 5%); writes bench/soak.json
	$(PY) -m bench.soak $(ARGS)

reliability: $(STAMP) chart-scan  ## faults under load through HAProxy (needs haproxy) + accounting checks; writes reliability/report.json
	$(PY) -m reliability $(ARGS)

chart-scan: $(STAMP) helm checkov  ## checkov's Kubernetes checks on the rendered chart, default and prod values
	PATH="$(CURDIR)/.tools/bin:$$PATH" $(PY) -m pytest -q tests/charts/test_checkov.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

image:  ## build the gateway image where a container engine runs
	@if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then \
		docker build -t liftoff-gateway:dev app; \
	else \
		echo "make image: no running container engine (docker info failed); build on a machine with Docker or let 'pulumi up' build it via docker-build." >&2; exit 1; \
	fi

lock: $(STAMP)  ## re-pin constraints.txt to what the venv resolves (after changing pyproject.toml)
	$(PY) -m pip install --quiet --upgrade -e '.[test]'
	{ head -n 2 constraints.txt; $(PY) -m pip freeze --exclude-editable | grep -v '^liftoff'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) .tools .pytest_cache
