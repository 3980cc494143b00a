"""The README's main command, `iotml run`, on a small fleet, as a user runs it."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_iotml_run_end_to_end(tmp_path):
    iotml = Path(sys.executable).with_name("iotml")
    result = subprocess.run(
        [str(iotml), "run", "--config", str(REPO / "configs" / "local.yaml"), "--work-dir", str(tmp_path),
         "--devices", "4", "--duration", "1200"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    events = summary["events"]
    assert events["balanced"] and events["events_in"] == events["predictions"] + events["dead_letters"]
    assert summary["dead_letters"]["by_reason"] == summary["dead_letters"]["injected"]
    assert summary["alert_accuracy"]["counts"]["faults"] > 0
    assert summary["alert_accuracy"]["recall"] >= 0.5 and summary["alert_accuracy"]["precision"] >= 0.5
    assert summary["latency_ms"]["p99_ms"] > 0
    assert (tmp_path / "report.png").stat().st_size > 10_000
    assert "alert_accuracy.precision" in (tmp_path / "report.html").read_text()
    assert "events.balanced" in result.stdout
    assert not (tmp_path / "mlruns").exists()
