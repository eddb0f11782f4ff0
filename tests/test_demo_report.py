import base64
import json
import re

from pellucid.cli import main


def test_demo_trains_evaluates_and_writes_a_self_contained_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--epochs", "1", "--limit", "24", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["n"] == 24 and 0 <= summary["robust_accuracy"] <= summary["clean_accuracy"]
    for png in ("reliability", "learning_curve", "accuracy_vs_eps", "twostep", "conv_kernels",
                "affine_features", "affine_posed_features", "how_model_sees"):
        assert (out / f"{png}.png").stat().st_size > 1000, png
    html = (out / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) >= 8 and all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert "src=\"http" not in html and "<script" not in html and "robust accuracy" in html
    # the headline: the accuracies as percentages (no-break space before the sign)
    clean = f"{summary['clean_accuracy'] * 100:.2f}\u00a0%"
    robust = f"{summary['robust_accuracy'] * 100:.2f}\u00a0%"
    headline = html[html.index("<div class='headline'>"):html.index("<section")]
    assert clean in headline and robust in headline and "training time" in headline
    # the demo records its gradient-masking checks like `pellucid evaluate` (one pipeline) and
    # its report shows them: one row per check with its result
    assert set(summary["checks"]) == {"gradients", "deterministic", "unbounded", "monotone", "black_box"}
    assert "Gradient-masking checks" in html and "monotone" in html
    checks = html[html.index("<h2>Gradient-masking checks</h2>"):]
    checks = checks[:checks.index("</section>")]
    for name, c in summary["checks"].items():
        result = {True: "passed", False: "FAILED", None: "not run"}[c["passed"]]
        assert re.search(f"<td>{name}</td><td class=[a-z]+>{result}</td>", checks), (name, result)
    # provenance: when and how the report was written
    assert "written (UTC)" in html and "<th>command</th>" in html and "git commit" in html
    # running the demo again reuses the finished run instead of failing
    assert main(["demo", "--out", str(out), "--epochs", "1", "--limit", "24"]) == 0
