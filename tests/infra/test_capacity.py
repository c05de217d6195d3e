"""`python -m infra.capacity`: the sizing and cost maths against hand-computed cases, the checks
against the stack's limits, bad input, the benchmark figure's source, and the PNG plot."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import redis

from infra import capacity, capacity_sizing, instance_types
from infra.capacity import plan_capacity
from infra.capacity_checks import addon_requests
from infra.capacity_plot import cost_figure, save_cost_plot
from infra.capacity_sizing import (
    CapacityError,
    GatewayCost,
    ModelPrice,
    Traffic,
    cache_bytes_needed,
    cache_entry_bytes,
    gateway_cost,
    nodes_for_pods,
    per_pod_rps,
    pods_for_load,
    smallest_cache_node,
    token_cost_usd,
    with_zone_loss,
)
from infra.cost import default_prices
from infra.settings import load_stack_file

# 250 us of gateway CPU for every kind of request: one core serves 4,000 req/s.
FLAT_COST = GatewayCost(250.0, 250.0, 250.0, "test figure")
MINI = ModelPrice("gpt-4o-mini-2024-07-18", 0.15, 0.60, 0.075)
INSTRUCT = ModelPrice("gpt-3.5-turbo-instruct", 1.50, 2.00, None)


def test_pods_at_the_hpa_target_and_with_one_zone_lost() -> None:
    # per pod: 0.5 core x 60% x 1e6 us / 250 us = 1,200 req/s; 3,000 / 1,200 = 2.5 -> 3 pods
    assert per_pod_rps(250, 0.5, 60, workers=1) == pytest.approx(1200)
    assert pods_for_load(3000, 1200) == 3
    # exactly 2 pods' worth stays 2 (no rounding up of a whole number)
    assert pods_for_load(2400, 1200) == 2
    # 2 cores x 70% = 1.4 cores, but one worker process uses one core at most: 1e6 / 250 = 4,000;
    # with 2 workers the 1.4 cores count: 1.4 x 4,000 = 5,600
    assert per_pod_rps(250, 2, 70, workers=1) == pytest.approx(4000)
    assert per_pod_rps(250, 2, 70, workers=2) == pytest.approx(5600)
    # 3 pods over 3 zones: 3 x 3/2 = 4.5 -> 5; over 2 zones: 4 x 2/1 = 8
    assert with_zone_loss(3, 3) == 5
    assert with_zone_loss(4, 2) == 8


def test_mixed_cpu_per_request_weights_hits_and_streams() -> None:
    cost = GatewayCost(miss_us=300, hit_us=100, stream_us=1200, source="x")
    # JSON: 0.5 x 300 + 0.5 x 100 = 200; mixed: 0.75 x 200 + 0.25 x 1200 = 450
    assert cost.mixed_us(stream_share=0.25, hit_rate=0.5) == pytest.approx(450)


def test_nodes_hold_the_pods_after_addons() -> None:
    node = instance_types.lookup("m7i.xlarge")
    assert node is not None
    addons = addon_requests("ON_DEMAND", "Initial")  # 450m, 1540 MiB, 9 pods
    # m7i.xlarge: 4000m - 80m kube-reserved - 150m daemonsets = 3770m -> 7 pods of 500m per node;
    # the add-ons take ceil(450 / 500) = 1 pod's CPU: n nodes hold 7n - 1; 20 pods -> n = 3
    assert nodes_for_pods(node, 20, 500, 512, addons) == 3
    assert nodes_for_pods(node, 21, 500, 512, addons) == 4
    # a pod larger than the node never fits
    assert nodes_for_pods(node, 1, 8000, 512, addons) is None


def test_cache_memory_for_one_ttl_and_the_smallest_node() -> None:
    # 200 completion tokens x 4 B + 1024 B JSON + 440 B key and Redis = 2,264 B
    assert cache_entry_bytes(200) == 2264
    traffic = Traffic(rps=10, prompt_tokens=5000, completion_tokens=200, cache_hit_rate=0.5)
    # 10 req/s x 0.5 misses x 3600 s = 18,000 entries x 2,264 B = 40,752,000 B (the prompt is
    # only hashed into the key)
    assert cache_bytes_needed(traffic, 3600) == pytest.approx(40_752_000)
    prices = default_prices()
    # 1 GiB x 1.25 = 1,342,177,280 B; t4g.small keeps 1,471,026,299 x 0.75 = 1,103,269,724
    # (too small), t4g.medium 3,317,862,236 x 0.75 = 2,488,396,677 (fits)
    assert smallest_cache_node(2**30, "us-east-1", prices) == "cache.t4g.medium"
    # 0.3e9 x 1.25 = 375e6 <= t4g.micro's 536,870,912 x 0.75 = 402,653,184
    assert smallest_cache_node(0.3e9, "us-east-1", prices) == "cache.t4g.micro"
    # r7g.4xlarge keeps 113,609,865,216 x 0.75 = 85.2e9: 80e9 x 1.25 = 100e9 fits nothing priced
    assert smallest_cache_node(80e9, "us-east-1", prices) is None


def test_token_cost_with_and_without_the_cache() -> None:
    traffic = Traffic(
        rps=1, prompt_tokens=1000, completion_tokens=100, cache_hit_rate=0.25,
        provider_cached_share=0.5,
    )  # fmt: skip
    # 1 req/s x 730 h x 3600 s = 2,628,000 calls; prompt at 0.5 x 0.15 + 0.5 x 0.075 = 0.1125/1M:
    # (1000 x 0.1125 + 100 x 0.60) / 1e6 = 0.0001725 per call -> 453.33; with the cache x 0.75
    cost = token_cost_usd(traffic, MINI, 730)
    assert cost["without_cache"] == pytest.approx(453.33, abs=0.01)
    assert cost["with_cache"] == pytest.approx(340.00, abs=0.01)
    # no cached-input price: the provider-cached share does not apply
    # (1000 x 1.50 + 100 x 2.00) / 1e6 x 2,628,000 = 4,467.60
    plain = token_cost_usd(traffic, INSTRUCT, 730)
    assert plain["without_cache"] == pytest.approx(4467.60, abs=0.01)


def test_prod_plan_sizes_pods_nodes_and_knobs() -> None:
    settings = load_stack_file("prod")
    plan = plan_capacity(settings, Traffic(rps=6000), cost=FLAT_COST)
    # 6,000 / 1,200 per pod = 5 pods; 3 zones: 5 x 1.5 = 7.5 -> 8
    assert (plan.load_pods, plan.pods) == (5, 8)
    # m7i.xlarge holds 7n - 1: 2 nodes hold 13 >= 8, but liftoff:nodeMinSize is 3
    assert [(n.instance_type, n.nodes) for n in plan.nodes] == [
        ("m7i.xlarge", 3),
        ("m6i.xlarge", 3),
    ]
    # 8 pods x 1 worker x redis.max_connections 128
    assert plan.cache_connections == 1024
    verdicts = {c["check"]: c["ok"] for c in plan.checks}
    # one TTL of misses: 6,000 x 3,600 = 21.6M entries x 2,264 B = 48.9e9 B, x 1.25 = 61.1e9:
    # more than r7g.large keeps (14,037,181,030 x 0.75 = 10.5e9), m7g.4xlarge (42.1e9) and
    # r7g.2xlarge (42.5e9); r7g.4xlarge keeps 113,609,865,216 x 0.75 = 85.2e9
    assert verdicts == {
        "liftoff:appMaxReplicas": True,
        "liftoff:nodeMaxSize": True,
        "liftoff:vpcCidr": True,
        "liftoff:cacheNodeType": False,
        "cache connections": True,
    }
    assert plan.cache_node_type == "cache.r7g.4xlarge"
    assert "pulumi config set --stack prod liftoff:appMinReplicas 8" in plan.config_set
    assert "pulumi config set --stack prod liftoff:nodeMaxSize 12" in plan.config_set
    # 3 x m7i.xlarge in us-west-2: 0.2016 x 730 x 3 = 441.50; 3 x 100 GB gp3 x 0.08 = 24.00
    assert plan.infra_cost_usd["nodes"] == pytest.approx(441.50)
    assert plan.infra_cost_usd["node_disks"] == pytest.approx(24.00)
    # EKS 0.10 + 3 NAT x 0.045 + ALB 0.0225 + 1 LCU x 0.008 = 0.2655/h x 730 = 193.82
    assert plan.infra_cost_usd["fixed_core"] == pytest.approx(193.82, abs=0.01)
    # 6,000 x 730 x 3600 = 15,768,000,000 calls x (500 x 0.15 + 200 x 0.60) / 1e6 = 3,074,760
    assert plan.token_cost_usd["without_cache"] == pytest.approx(3_074_760.00)


def test_prod_cache_at_200_rps_picks_the_cheapest_node_that_holds_one_ttl() -> None:
    plan = plan_capacity(load_stack_file("prod"), Traffic(rps=200), cost=FLAT_COST)
    # 200 x 3,600 = 720,000 entries x 2,264 B = 1.63e9 B, x 1.25 = 2.04e9: t4g.small keeps
    # 1,471,026,299 x 0.75 = 1.10e9 (too small), t4g.medium 3,317,862,236 x 0.75 = 2.49e9
    assert plan.cache_entries == 720_000
    assert plan.cache_node_type == "cache.t4g.medium"
    assert (
        "pulumi config set --stack prod liftoff:cacheNodeType cache.t4g.medium" in plan.config_set
    )
    # valkey 20% below list: 0.065 x 0.8 x 730 h x 3 nodes (2 replicas) = 113.88
    assert plan.infra_cost_usd["cache"] == pytest.approx(113.88)
    verdicts = {c["check"]: c["ok"] for c in plan.checks}
    assert verdicts["liftoff:cacheNodeType"]  # the configured r7g.large keeps 10.5e9


def test_plan_says_when_the_stack_cannot_carry_it() -> None:
    settings = load_stack_file("prod", {"liftoff:vpcCidr": "10.30.0.0/20"})
    plan = plan_capacity(settings, Traffic(rps=288_000), cost=FLAT_COST)
    # 288,000 / 1,200 = 240 pods -> 360 with a zone lost; 7n - 1 >= 360 -> 52 nodes
    assert plan.pods == 360
    assert plan.nodes[0].nodes == 52
    failed = {c["check"] for c in plan.checks if not c["ok"]}
    # 360 > appMaxReplicas 30; 52 > nodeMaxSize 12; a /22 private subnet holds 1019 addresses,
    # ceil(52 / 3) = 18 nodes x (58 + 1) = 1062 per subnet; one TTL of entries outgrows the cache
    assert failed == {
        "liftoff:appMaxReplicas",
        "liftoff:nodeMaxSize",
        "liftoff:vpcCidr",
        "liftoff:cacheNodeType",
    }
    assert any(line.startswith("# beyond what liftoff settings accept") for line in plan.config_set)


@pytest.mark.parametrize(
    ("traffic", "message"),
    [
        (Traffic(rps=-1), "--rps = -1: must be >= 0"),
        (Traffic(rps=1, stream_share=1.5), "--stream-share = 1.5: a share between 0 and 1"),
        (Traffic(rps=1, cache_hit_rate=-0.1), "--cache-hit-rate = -0.1: a share between 0 and 1"),
        (Traffic(rps=1, model="gpt-9"), "--model = gpt-9: unknown model; known:"),
    ],
)
def test_bad_input_is_refused_with_the_option_named(traffic: Traffic, message: str) -> None:
    with pytest.raises(CapacityError, match=message.replace("+", r"\+")):
        plan_capacity(load_stack_file("dev"), traffic, cost=FLAT_COST)


def test_cli_reports_bad_input_and_prints_a_plan(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert capacity.main(["--stack", "dev", "--rps", "10", "--cache-hit-rate", "2"]) == 2
    assert "--cache-hit-rate = 2.0: a share between 0 and 1" in capsys.readouterr().err
    assert capacity.main(["--stack", "dev", "--rps", "10", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["stack"] == "dev" and shown["pods"] >= 1
    assert "cache_miss_gateway_cpu_us_per_request" in shown["throughput_source"]
    plot = tmp_path / "plan.png"
    assert capacity.main(["--stack", "dev", "--rps", "10", "--plot", str(plot)]) == 0
    assert "pulumi config set --stack dev liftoff:appMinReplicas" in capsys.readouterr().out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _phase(us: float, rps: float) -> dict:
    return {"rps": rps, "cpu_us_per_request": {"gateway": us}}


def test_throughput_comes_from_the_benchmark_or_says_it_is_assumed(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    results.write_text(
        json.dumps(
            {
                "figures": {"cache_miss_gateway_cpu_us_per_request": 300.0},
                "phases": {
                    "gateway_open_cache_miss": _phase(500.0, 500.0),
                    "gateway_open_cache_hit": _phase(400.0, 500.0),
                    "gateway_open_stream": _phase(1500.0, 100.0),
                },
            }
        )
    )
    cost = gateway_cost(results)
    # idle work: (500 - 300) us x 500 req/s = 100,000 us/s (0.10 core);
    # hit: 400 - 100,000 / 500 = 200; stream: 1500 - 100,000 / 100 = 500
    assert (cost.miss_us, cost.hit_us, cost.stream_us) == pytest.approx((300.0, 200.0, 500.0))
    assert "figures.cache_miss_gateway_cpu_us_per_request" in cost.source
    assert "less 0.10 core of idle work" in cost.source
    # without the open-loop miss and stream phases: the hit as measured, streams 4 x the miss
    results.write_text(
        json.dumps(
            {
                "figures": {"cache_miss_gateway_cpu_us_per_request": 300.0},
                "phases": {"gateway_open_cache_hit": _phase(120.0, 500.0)},
            }
        )
    )
    partial = gateway_cost(results)
    assert (partial.hit_us, partial.stream_us) == (120.0, 1200.0)
    assert "stream assumed 4x miss" in partial.source
    missing = gateway_cost(tmp_path / "absent.json")
    assert missing.source.startswith("default assumption")
    assert missing.miss_us == pytest.approx(1e6 / 3000)


def test_plot_is_a_png_with_one_line_per_instance_type(tmp_path: Path) -> None:
    settings = load_stack_file("prod")
    traffic = Traffic(rps=200)
    figure = cost_figure(settings, traffic, cost=FLAT_COST)
    for axes in figure.axes:
        assert [line.get_label() for line in axes.get_lines()] == ["m7i.xlarge", "m6i.xlarge"]
    single = cost_figure(settings, traffic, ["m7i.xlarge"], cost=FLAT_COST)
    assert [len(axes.get_lines()) for axes in single.axes] == [1, 1]
    path = tmp_path / "cost.png"
    save_cost_plot(settings, traffic, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_added_prices_and_cache_memory_cover_what_settings_accept() -> None:
    # c7g.large had no price before: with the us-east-1 figure the settings accept it there
    accepted = load_stack_file("dev", {"liftoff:nodeInstanceTypes": '["c7g.large"]'})
    assert accepted.node_instance_types == ["c7g.large"]
    prices = default_prices()
    assert prices.regions["us-east-1"]["ec2_hourly"]["c7g.large"] == 0.0725
    for sheet in prices.regions.values():
        assert set(sheet["elasticache_hourly"]) <= set(capacity_sizing.cache_maxmemory_bytes())


def test_cache_entry_estimate_matches_a_real_server(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    answer = b"x" * (
        200 * capacity_sizing.BYTES_PER_TOKEN + capacity_sizing.ENTRY_JSON_OVERHEAD_BYTES
    )
    before = client.info("memory")["used_memory"]
    keys = 5000
    pipe = client.pipeline(transaction=False)
    for i in range(keys):
        pipe.set(f"liftoff:cache:v1:{hashlib.sha256(b'%d' % i).hexdigest()}", answer, ex=3600)
    pipe.execute()
    per_key = (client.info("memory")["used_memory"] - before) / keys
    client.close()
    # the estimate for 200 completion tokens (2,264 B) within 20% of what the server holds
    assert 0.8 * per_key <= cache_entry_bytes(200) <= 1.2 * per_key, per_key
