"""Builds deploy/grafana/streamer.json, the provisioned Grafana dashboard; console_page.py
builds the Prometheus console page from the same panels.

Kept as code so panels stay uniform (units, rate intervals, variables); both files are
committed, and tests check they match the scripts' output.

    .venv/bin/python deploy/grafana/dashboard.py && .venv/bin/python deploy/grafana/console_page.py
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

SEL = 'job="$job", instance=~"$instance"'
DS = {"type": "prometheus", "uid": "${datasource}"}
NAME_ONLY = {"textMode": "name", "reduceOptions": {"calcs": ["lastNotNull"]}}  # stat of a label

# Exported families shown nowhere on purpose (with the reason); a test keeps this honest.
UNPLOTTED = {
    "streamer_kafka_last_poll_timestamp_seconds": "read by /healthz; the stall alert covers it",
    "streamer_replay_capacity": "a constant of the config",
    "streamer_config_last_reload_success_timestamp_seconds": "the config hash panel shows changes",
    "process_virtual_memory_bytes": "resident memory is what leaks and what the limit kills",
    "process_start_time_seconds": "a restart shows as a gap and as up == 0",
    "python_info": "a constant of the image",
    "python_gc_objects_collected_total": "collections per generation show the GC's work",
    "python_gc_objects_uncollectable_total": "zero unless a C extension leaks cycles",
}
# Panels whose query may rightly return no series on a healthy daemon (with the reason); the
# end-to-end test requires data from every other panel.
MAY_BE_EMPTY: dict[str, str] = {
    "Retention of the base's reference window (now minus step 0)": (
        "needs evaluation.reference_manifest"
    ),
    "Classes that lost most alignment": "empty while no class has a deficit",
    "Blocks: probe top-1 with the block's adapters off, minus now": "LoRA mode only",
    "Forward transfer and per-class forgetting": (
        "NaN until measurable: forward transfer needs a window's probes before training on it "
        "(blurry streams, a manifest), per-class forgetting a class measured twice"
    ),
}


def _panel(kind: str, title: str, exprs: list[tuple[str, str]], unit: str, w: int, **extra):
    targets = [{"datasource": DS, "expr": e, "legendFormat": legend, "refId": chr(65 + i)}
               for i, (e, legend) in enumerate(exprs)]  # fmt: skip
    defaults = {"unit": unit, **extra.pop("defaults", {})}
    return {"type": kind, "title": title, "datasource": DS, "targets": targets,
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "gridPos": {"w": w, "h": 8}, **extra}  # fmt: skip


def ts(title, exprs, unit, w=8, **extra):
    return _panel("timeseries", title, exprs, unit, w, **extra)


def stat(title, exprs, unit, w=4, **extra):
    return _panel("stat", title, exprs, unit, w, **extra)


def quantile(q: float, histogram: str) -> str:
    return f"histogram_quantile({q}, {rate(histogram + '_bucket', 'le')})"


def rate(metric: str, by: str = "") -> str:
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping} (rate({metric}{{{SEL}}}[$__rate_interval]))"


ROWS = {
    "Throughput & lag": [
        ts(
            "Records per second",
            [
                (rate("streamer_records_consumed_total"), "consumed"),
                (rate("streamer_records_trained_total"), "trained"),
                (rate("streamer_records_probe_total"), "probes"),
                (rate("streamer_records_dead_lettered_total"), "dead-lettered"),
            ],
            "reqps",
        ),
        ts(
            "Produce-to-trained latency p50 / p99",
            [
                (quantile(0.5, "streamer_record_latency_seconds"), "p50"),
                (quantile(0.99, "streamer_record_latency_seconds"), "p99"),
            ],
            "s",
        ),
        ts(
            "Lag per partition",
            [(f"streamer_kafka_partition_lag_records{{{SEL}}}", "{{topic}}/{{partition}}")],
            "short",
        ),
        ts(
            "Invalid records by reason",
            [(rate("streamer_records_invalid_total", "reason"), "{{reason}}")],
            "reqps",
        ),
        stat(
            "State",
            [(f"streamer_state{{{SEL}}} == 1", "{{streamer_state}}")],
            "none",
            options=NAME_ONLY,
        ),
        stat(
            "Assigned partitions",
            [(f"sum(streamer_kafka_assigned_partitions{{{SEL}}})", "")],
            "short",
        ),
        stat("Buffered records", [(f"sum(streamer_kafka_buffered_records{{{SEL}}})", "")], "short"),
        stat("Paused (backpressure)", [(f"max(streamer_kafka_paused{{{SEL}}})", "")], "bool"),
        ts(
            "Rebalances and commit failures",
            [
                (rate("streamer_kafka_rebalances_total"), "rebalances"),
                (rate("streamer_kafka_commit_failures_total"), "commit failures"),
            ],
            "reqps",
            w=8,
        ),
    ],
    "Learning": [
        ts("Loss", [(f"streamer_train_loss{{{SEL}}}", "train loss")], "none"),
        ts(
            "Online (prequential) accuracy",
            [(f"streamer_train_prequential_accuracy_ratio{{{SEL}}}", "{{instance}}")],
            "percentunit",
        ),
        ts(
            "Step duration p50 / p95",
            [
                (
                    quantile(0.5, "streamer_train_step_duration_seconds"),
                    "p50",
                ),
                (
                    quantile(0.95, "streamer_train_step_duration_seconds"),
                    "p95",
                ),
            ],
            "s",
        ),
        ts("Learning rate", [(f"streamer_train_learning_rate{{{SEL}}}", "lr")], "none"),
        ts("Logit scale", [(f"streamer_train_logit_scale{{{SEL}}}", "exp(t)")], "none"),
        ts(
            "Steps and non-finite skips",
            [
                (rate("streamer_train_steps_total"), "steps"),
                (rate("streamer_train_nonfinite_skips_total"), "skipped (NaN/Inf)"),
            ],
            "ops",
        ),
        ts(
            "GPU memory",
            [(f"streamer_gpu_memory_allocated_bytes{{{SEL}}}", "{{instance}}")],
            "bytes",
        ),
        ts(
            "Label prompts held (scoring candidates)",
            [
                (f"streamer_learner_labels{{{SEL}}}", "held"),
                (f"streamer_learner_labels_capacity{{{SEL}}}", "bound"),
            ],
            "short",
        ),
    ],
    "Forgetting": [
        ts(
            "Probe accuracy per window",
            [(f"streamer_quality_window_accuracy_ratio{{{SEL}}}", "{{window}}")],
            "percentunit",
            w=12,
        ),
        ts(
            "A_last, A_auc, forgetting, BWT",
            [
                (f"streamer_quality_accuracy_last_ratio{{{SEL}}}", "A_last"),
                (f"streamer_quality_accuracy_auc_ratio{{{SEL}}}", "A_auc"),
                (f"streamer_quality_forgetting_average_ratio{{{SEL}}}", "avg forgetting"),
                (f"streamer_quality_backward_transfer_ratio{{{SEL}}}", "BWT"),
            ],
            "percentunit",
            w=12,
        ),
        ts(
            "Retention of the base's reference window (now minus step 0)",
            [(f"streamer_quality_retention_ratio{{{SEL}}}", "retention")],
            "percentunit",
        ),
        ts(
            "Forward transfer and per-class forgetting",
            [
                (f"streamer_quality_forward_transfer_ratio{{{SEL}}}", "forward transfer"),
                (
                    f"streamer_quality_class_forgetting_average_ratio{{{SEL}}}",
                    "per-class forgetting",
                ),
            ],
            "percentunit",
        ),
        stat(
            "Windows left out (too few probes)",
            [(f"streamer_quality_windows_left_out{{{SEL}}}", "")],
            "short",
        ),
    ],
    "Alignment & misalignment": [
        ts(
            "Matched cosine and modality gap",
            [
                (f"streamer_quality_matched_cosine_ratio{{{SEL}}}", "matched cosine"),
                (f"streamer_quality_modality_gap{{{SEL}}}", "modality gap"),
            ],
            "none",
        ),
        ts(
            "Drift from the base model",
            [(f"streamer_quality_drift_ratio{{{SEL}}}", "{{modality}}")],
            "none",
        ),
        ts(
            "Alignment deficit",
            [
                (f"streamer_quality_alignment_deficit_ratio{{{SEL}}}", "deficit"),
                (f"streamer_quality_alignment_deficit_lost_ratio{{{SEL}}}", "of it lost"),
                (f"streamer_quality_misalignment_threshold{{{SEL}}}", "threshold"),
                (f"streamer_quality_misaligned{{{SEL}}}", "misaligned (held)"),
            ],
            "percentunit",
        ),
        ts(
            "Tower swap: probe top-1",
            [
                (
                    f"streamer_quality_tower_swap_accuracy_ratio{{{SEL}}}",
                    "image {{image}}, text {{text}}",
                )
            ],
            "percentunit",
        ),
        ts(
            "Misalignment blame by tower",
            [(f"streamer_quality_misalignment_blame_ratio{{{SEL}}}", "{{tower}}")],
            "percentunit",
        ),
        stat(
            "Blamed tower",
            [(f"streamer_quality_blamed_tower{{{SEL}}} == 1", "{{tower}}")],
            "none",
            options=NAME_ONLY,
        ),
        ts(
            "Classes that lost most alignment",
            [(f"streamer_quality_class_alignment_deficit_ratio{{{SEL}}}", "{{class}}")],
            "percentunit",
        ),
        ts(
            "Image separability (kNN of the images alone)",
            [
                (f"streamer_quality_image_separability_ratio{{{SEL}}}", "kNN top-1"),
                (f"streamer_quality_image_separability_base_ratio{{{SEL}}}", "the base's"),
                (f"streamer_quality_image_collapse_ratio{{{SEL}}}", "lost (collapse)"),
                (f"streamer_quality_image_collapse_threshold{{{SEL}}}", "collapse threshold"),
            ],
            "percentunit",
        ),
        ts(
            "Blocks: how far each moved",
            [(f"streamer_quality_block_delta_norm{{{SEL}}}", "{{tower}} {{block}}")],
            "none",
        ),
        ts(
            "Blocks: probe top-1 with the block's adapters off, minus now",
            [(f"streamer_quality_block_recovery_ratio{{{SEL}}}", "{{tower}} {{block}}")],
            "percentunit",
        ),
        ts(
            "Recall@1",
            [(f"streamer_quality_recall_at_1_ratio{{{SEL}}}", "{{direction}}")],
            "percentunit",
        ),
        ts(
            "Alignment and uniformity",
            [
                (f"streamer_quality_alignment{{{SEL}}}", "alignment"),
                (f"streamer_quality_uniformity{{{SEL}}}", "uniformity {{modality}}"),
            ],
            "none",
        ),
        ts("Drift alarms", [(rate("streamer_drift_alarms_total", "signal"), "{{signal}}")], "ops"),
    ],
    "Replay & checkpoints": [
        ts("Replay buffer", [(f"streamer_replay_items{{{SEL}}}", "items")], "short"),
        ts("Replay bytes", [(f"streamer_replay_bytes{{{SEL}}}", "bytes")], "bytes"),
        ts(
            "Checkpoint duration p95",
            [
                (quantile(0.95, "streamer_checkpoint_duration_seconds"), "p95"),
                (quantile(0.95, "streamer_checkpoint_snapshot_seconds"), "training held, p95"),
            ],
            "s",
        ),
        stat(
            "Since last checkpoint",
            [(f"time() - max(streamer_checkpoint_last_success_timestamp_seconds{{{SEL}}})", "")],
            "s",
        ),
        ts(
            "Checkpoint failures",
            [
                (rate("streamer_checkpoint_failures_total"), "write failures"),
                (rate("streamer_checkpoint_unreadable_total"), "unreadable at restore"),
            ],
            "ops",
        ),
        stat(
            "Config accepted",
            [(f"min(streamer_config_last_reload_successful{{{SEL}}})", "")],
            "bool",
        ),
        stat(
            "Config hash",
            [(f"streamer_config_info{{{SEL}}}", "{{hash}}")],
            "none",
            options=NAME_ONLY,
        ),
        stat(
            "Build",
            [(f"streamer_build_info{{{SEL}}}", "{{model}} {{peft}} {{loss}}")],
            "none",
            options=NAME_ONLY,
        ),
    ],
    "Publishing & rollback": [
        stat("Published version", [(f"max(streamer_publish_version{{{SEL}}})", "")], "none"),
        stat(
            "Since last publish",
            [(f"time() - max(streamer_publish_last_timestamp_seconds{{{SEL}}})", "")],
            "s",
        ),
        stat("Gate passing", [(f"min(streamer_publish_gate_passing{{{SEL}}})", "")], "bool"),
        ts(
            "Gate refusals by reason",
            [(rate("streamer_publish_gate_failures_total", "reason"), "{{reason}}")],
            "ops",
        ),
        ts(
            "Uploads and rollbacks",
            [
                (rate("streamer_publish_retries_total"), "retries"),
                (rate("streamer_publish_failures_total"), "given up"),
                (rate("streamer_rollbacks_total"), "rollbacks"),
                (f"max(streamer_publish_gate_consecutive_failures{{{SEL}}})", "refused in a row"),
            ],
            "short",
            w=4,
        ),
    ],
    "Process": [
        ts(
            "CPU cores used",
            [(rate("process_cpu_seconds_total", "instance"), "{{instance}}")],
            "short",
            w=6,
        ),
        ts(
            "Resident memory",
            [(f"process_resident_memory_bytes{{{SEL}}}", "{{instance}}")],
            "bytes",
            w=6,
        ),
        ts(
            "Open file descriptors",
            [
                (f"process_open_fds{{{SEL}}}", "open {{instance}}"),
                (f"process_max_fds{{{SEL}}}", "limit {{instance}}"),
            ],
            "short",
            w=6,
        ),
        ts(
            "Python GC collections",
            [(rate("python_gc_collections_total", "generation"), "generation {{generation}}")],
            "ops",
            w=6,
        ),
    ],
}


def panels() -> Iterator[tuple[str, dict]]:
    """(row title, panel) in dashboard order."""
    for row, row_panels in ROWS.items():
        for panel in row_panels:
            yield row, panel


def promql(expr: str, values: Mapping[str, str]) -> str:
    """The expression as Prometheus receives it: Grafana's $var / ${var} filled from values
    (a KeyError names a variable nobody knows how to fill)."""
    return re.sub(r"\$\{?(\w+)\}?", lambda m: values[m.group(1)], expr)


def variables() -> list[dict]:
    def query(name, expr):
        return {"name": name, "type": "query", "datasource": DS, "refresh": 2,
                "query": {"query": expr, "refId": name}, "definition": expr,
                "includeAll": name == "instance", "multi": name == "instance"}  # fmt: skip

    source = {"name": "datasource", "type": "datasource", "query": "prometheus",
              "label": "Data source"}  # fmt: skip
    instances = 'label_values(streamer_build_info{job="$job"}, instance)'
    return [source, query("job", "label_values(streamer_build_info, job)"),
            query("instance", instances)]  # fmt: skip


def dashboard() -> dict:
    panels, y, next_id = [], 0, 1
    for title, row_panels in ROWS.items():
        panels.append({"type": "row", "title": title, "id": next_id, "collapsed": False,
                       "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}, "panels": []})  # fmt: skip
        next_id, y, x = next_id + 1, y + 1, 0
        for panel in row_panels:
            w = panel["gridPos"]["w"]
            if x + w > 24:
                x, y = 0, y + 8
            panel = {**panel, "id": next_id, "gridPos": {"x": x, "y": y, "w": w, "h": 8}}
            panels.append(panel)
            next_id, x = next_id + 1, x + w
        y += 8
    return {"title": "streamer", "uid": "streamer", "schemaVersion": 39, "version": 1,
            "tags": ["streamer", "clip", "kafka"], "timezone": "browser", "editable": True,
            "time": {"from": "now-6h", "to": "now"}, "refresh": "30s",
            "templating": {"list": variables()}, "panels": panels,
            "annotations": {"list": []}}  # fmt: skip


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


if __name__ == "__main__":  # the console page is written by console_page.py
    (Path(__file__).parent / "streamer.json").write_text(render())
