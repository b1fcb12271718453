"""The preflight's parsers (scontrol lines, SLURM times, gres, weights references) and its cluster rule, over
generated inputs; and the partition limits the single-node test cluster does not have (MaxNodes, MaxCPUsPerNode,
MaxMemPerNode, a DOWN partition, nodes of different sizes), on scontrol output written here."""

import math
import re
from pathlib import Path

import pytest
from huggingface_hub.utils import HFValidationError, validate_repo_id
from hypothesis import given, settings
from hypothesis import strategies as st

from gem_stages.errors import InputError
from gemctl.launch.resources import Resources
from gemctl.preflight import check_cluster, classify, gres_gpus, parse_minutes, parse_scontrol, partitions

PROPERTY = settings(settings.get_profile("gemctl-fuzz"), max_examples=300)
NOWHERE = Path("/nonexistent-gemctl-project")

key = st.from_regex(r"[A-Z][A-Za-z]{0,11}", fullmatch=True)
# a value's words: any printable text without spaces that does not itself read as "Key=..."
word = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=10) \
    .filter(lambda w: not re.match(r"[A-Za-z][\w:/]*=", w))
value = st.lists(word, max_size=4).map(" ".join)


@PROPERTY
@given(fields=st.dictionaries(key, value, min_size=1, max_size=8))
def test_scontrol_lines_parse_back(fields):
    line = " ".join(f"{k}={v}" for k, v in fields.items())
    assert parse_scontrol(line) == fields


@PROPERTY
@given(d=st.integers(0, 400), h=st.integers(0, 23), m=st.integers(0, 59), s=st.integers(0, 59))
def test_slurm_times_parse_to_minutes_rounded_up(d, h, m, s):
    expected = d * 1440 + h * 60 + m + (1 if s else 0)
    assert parse_minutes(f"{d}-{h:02d}:{m:02d}:{s:02d}") == expected
    if d == 0:
        assert parse_minutes(f"{h:02d}:{m:02d}:{s:02d}") == expected
    assert parse_minutes(str(d * 1440 + h * 60 + m)) == d * 1440 + h * 60 + m  # slurm.conf: plain minutes
    for none in ("UNLIMITED", "INFINITE", "NONE", ""):
        assert parse_minutes(none) is None


gpu = st.tuples(st.sampled_from(["", "a100:", "h100_80g:", "l4:"]), st.integers(0, 16),
                st.sampled_from(["", "(S:0-1)", "(S:0)"]))
other = st.tuples(st.sampled_from(["shard", "mps", "nvme"]), st.integers(0, 64))


@PROPERTY
@given(gpus=st.lists(gpu, max_size=3), others=st.lists(other, max_size=2), order=st.randoms())
def test_gres_counts_gpus_only(gpus, others, order):
    items = [f"gpu:{t}{n}{s}" for t, n, s in gpus] + [f"{name}:{n}" for name, n in others]
    order.shuffle(items)
    assert gres_gpus(",".join(items) or "(null)") == sum(n for _, n, _ in gpus)


@PROPERTY
@given(text=st.text(max_size=40))
def test_a_weights_setting_is_a_path_a_valid_hub_id_or_refused(text):
    try:
        ref = classify(text, NOWHERE)
    except InputError as e:
        assert "neither an existing directory nor a hub id" in str(e) and "\n" not in str(e)
        return
    repo = text.partition("::")[0]
    if repo.startswith(("/", "./", "../", "~")) or repo.count("/") > 1:
        assert ref.kind == "path"
    if ref.kind == "hub":
        validate_repo_id(ref.where)  # what the hub would accept; never a path-looking value
        assert ref.where == repo


@pytest.mark.parametrize("value, kind", [("./w", "path"), ("/w", "path"), ("~/w", "path"), ("../w", "path"),
                                         ("a/b/c", "path"), ("Qwen/Qwen3-VL-2B-Instruct", "hub"), ("gpt2", "hub"),
                                         ("org/repo::transformer", "hub")])
def test_paths_and_hub_ids_are_told_apart(value, kind):
    assert classify(value, NOWHERE).kind == kind


def test_an_existing_relative_directory_is_a_path_even_when_it_reads_as_a_hub_id(tmp_path):
    (tmp_path / "org" / "model").mkdir(parents=True)
    ref = classify("org/model", tmp_path)
    assert (ref.kind, ref.where) == ("path", str(tmp_path / "org" / "model"))
    with pytest.raises(HFValidationError):
        validate_repo_id("./org/model")


# ----- partition limits, on scontrol output of a made-up cluster --------------------------------------------------
NODES = """\
NodeName=big1 Arch=x86_64 CPUTot=64 CPUEfctv=64 Gres=gpu:a100:8(S:0-1) OS=Linux 6.1 #1 SMP RealMemory=512000 State=IDLE Partitions=gpu,all
NodeName=big2 Arch=x86_64 CPUTot=64 CPUEfctv=64 Gres=gpu:a100:8(S:0-1) OS=Linux 6.1 #1 SMP RealMemory=512000 State=IDLE Partitions=gpu,all
NodeName=small1 Arch=x86_64 CPUTot=16 CPUEfctv=16 Gres=(null) OS=Linux 6.1 #1 SMP RealMemory=64000 MemSpecLimit=4000 State=IDLE Partitions=cpu,all
NodeName=small2 Arch=x86_64 CPUTot=16 CPUEfctv=16 Gres=(null) OS=Linux 6.1 #1 SMP RealMemory=64000 MemSpecLimit=4000 State=IDLE Partitions=cpu,all
"""
PARTS = """\
PartitionName=cpu Default=YES MaxNodes=UNLIMITED MaxTime=1-00:00:00 MaxCPUsPerNode=12 Nodes=small[1-2] State=UP MaxMemPerNode=UNLIMITED TRES=cpu=32,mem=128000M
PartitionName=gpu Default=NO MaxNodes=1 MaxTime=UNLIMITED MaxCPUsPerNode=UNLIMITED Nodes=big[1-2] State=UP MaxMemPerNode=256000
PartitionName=all Default=NO MaxNodes=UNLIMITED MaxTime=02:00:00 MaxCPUsPerNode=UNLIMITED State=UP MaxMemPerNode=UNLIMITED
PartitionName=maint Default=NO MaxNodes=UNLIMITED MaxTime=UNLIMITED State=DOWN MaxMemPerNode=UNLIMITED
"""


def made_up_cluster():
    return partitions(lambda cmd: NODES if cmd[2] == "node" else PARTS)


def test_made_up_cluster_parses():
    parts = made_up_cluster()
    assert [(p.name, p.default, p.state, p.max_nodes, p.max_time_min, p.max_cpus_per_node, p.max_mem_per_node_mb,
             [n.name for n in p.nodes]) for p in parts.values()] == [
        ("cpu", True, "UP", None, 1440, 12, None, ["small1", "small2"]),
        ("gpu", False, "UP", 1, None, None, 256000, ["big1", "big2"]),
        ("all", False, "UP", None, 120, None, None, ["big1", "big2", "small1", "small2"]),
        ("maint", False, "DOWN", None, None, None, None, [])]
    assert (parts["all"].nodes[0].gpus, parts["all"].nodes[2].mem_mb, parts["all"].nodes[2].cpus) == (8, 60000, 16)


@pytest.mark.parametrize("res, message", [
    ({}, None),  # the default partition: cpu
    ({"cpus_per_task": 13}, "= 13 CPUs per node, but partition 'cpu' gives a job at most 12 per node"),
    ({"partition": "gpu", "nodes": 2}, "allows at most 1 node(s) per job (MaxNodes)"),
    ({"partition": "gpu", "gpus_per_node": 8, "mem_gb": 250}, None),
    ({"partition": "gpu", "gpus_per_node": 8, "mem_gb": 251}, "gives a job at most 250.0 GB per node"),
    ({"partition": "cpu", "gpus_per_node": 1}, "have at most 0 GPU(s): lower it or use a GPU partition"),
    ({"partition": "all", "nodes": 3, "cpus_per_task": 32, "time_min": 60}, "has 2 node(s) with 32 CPUs, 0 GPU(s)"),
    ({"partition": "all", "nodes": 4, "time_min": 60}, None),
    ({"partition": "all", "time_min": 121}, "exceeds the 120-minute limit of partition 'all'"),
    ({"partition": "maint"}, "partition 'maint' is DOWN"),
    ({"partition": "gpus"},
     "unknown SLURM partition 'gpus' (resources.partition): use one of cpu (default), gpu, all, maint"),
])
def test_partition_limits(res, message):
    res = Resources(**{"signal_delay_s": 30, **res})
    if message is None:
        assert check_cluster(res, made_up_cluster()).startswith("partition")
    else:
        with pytest.raises(InputError) as e:
            check_cluster(res, made_up_cluster())
        assert message in str(e.value) and "\n" not in str(e.value)


@PROPERTY
@given(partition=st.sampled_from(["cpu", "gpu", "all", "maint", "nope", None]), nodes=st.integers(1, 5),
       gpus=st.integers(0, 9), tasks=st.integers(1, 4), cpus=st.integers(1, 70),
       mem=st.none() | st.floats(0.1, 600), time_min=st.integers(1, 3000))
def test_cluster_rule_accepts_exactly_what_fits(partition, nodes, gpus, tasks, cpus, mem, time_min):
    res = Resources(nodes=nodes, gpus_per_node=gpus, tasks_per_node=None if gpus else tasks, cpus_per_task=cpus,
                    mem_gb=mem, time_min=time_min, partition=partition, signal_delay_s=30)
    parts = made_up_cluster()
    p = parts.get(partition or "cpu")
    per_node_cpus = res.ntasks_per_node * cpus
    mem_mb = int(mem * 1024) if mem is not None else 0
    fits = (p is not None and p.state == "UP" and nodes <= (p.max_nodes or math.inf)
            and per_node_cpus <= (p.max_cpus_per_node or math.inf) and mem_mb <= (p.max_mem_per_node_mb or math.inf)
            and time_min <= (p.max_time_min or math.inf)
            and sum(n.cpus >= per_node_cpus and n.gpus >= gpus and n.mem_mb >= mem_mb for n in p.nodes) >= nodes)
    try:
        check_cluster(res, parts)
    except InputError as e:
        assert not fits, str(e)
        assert "\n" not in str(e)
    else:
        assert fits


@PROPERTY
@given(uri=st.text(max_size=30) | st.builds("{}:{}".format, st.from_regex(r"[a-z][a-z0-9+.-]{1,8}", fullmatch=True),
                                            st.text(max_size=20)))
def test_any_tracking_uri_is_accepted_or_refused_in_one_line(uri):
    from gemctl.preflight import check_tracking

    try:
        assert check_tracking(uri) == (uri or "the project's own sqlite store")
    except InputError as e:
        assert str(e).startswith("--tracking-uri '") and "\n" not in str(e)
