"""Item 10 of the Space issue: the console shows our lines, not the libraries' noise."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_entry_points_silence_library_noise(tiny_llama_dir, tmp_path):
    """Loading a model twice through the CLI's setup prints no progress bar and no FutureWarning (before the fix:
    a 'Loading weights' bar per load and transformers' is_gradient_checkpointing FutureWarning, which peft's
    get_peft_model triggers)."""
    code = f"""
import warnings
warnings.simplefilter("default")
from harness import quiet_libraries
quiet_libraries()
import transformers, peft
for _ in range(2):
    m = transformers.AutoModelForCausalLM.from_pretrained({str(tiny_llama_dir)!r})
peft.get_peft_model(m, peft.LoraConfig(r=2, target_modules=["q_proj"]))
print("done")
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("done")
    assert "Loading weights" not in out.stderr
    assert "FutureWarning" not in out.stderr


def test_interrupt_promises_nothing(monkeypatch, capsys):
    """Ctrl-C in a command that keeps nothing must not say 'completed items are saved'."""
    from harness.cli import main

    def boom() -> int:
        """raise KeyboardInterrupt"""
        raise KeyboardInterrupt

    monkeypatch.setitem(globals(), "_boom", boom)
    rc = main({"boom": (f"{__name__}:_boom", "interrupt")}, ["boom"])
    assert rc == 130
    assert "saved" not in capsys.readouterr().err


def test_no_server_path_reaches_the_page(tmp_path):
    """Issue 24 'Leaks': a truncated adapter's problem names its file under the server's adapters folder; the
    app's message shows the file's name, never the folder (before the fix the whole path was shown)."""
    from harness.app.state import AppState
    from harness.app.widgets import message
    from harness.errors import UserError

    folder = tmp_path / "srv-secret-folder"
    ad = folder / "broken-chat"
    ad.mkdir(parents=True)
    (ad / "adapter_config.json").write_text('{"peft_type": "LORA", "task_type": "CAUSAL_LM", '
                                            '"base_model_name_or_path": "smollm2-135m-instruct", "r": 2, '
                                            '"target_modules": ["q_proj"]}')
    (ad / "adapter_model.safetensors").write_bytes(b"\x08\x00\x00")
    state = AppState(adapters_folder=folder, store=str(tmp_path / "s.sqlite"))
    try:
        state.resolve_adapter("broken-chat", "causal")
        raise AssertionError("a truncated adapter must be refused")
    except UserError as e:
        shown = message(e)
    assert "broken-chat" in shown and str(folder) not in shown and "srv-secret-folder" not in shown, shown
    assert "git checkout" not in shown and "python -m harness" not in shown, "no command-line advice on the page"
    unexpected = message(OSError(2, "No such file or directory", str(folder / "x.bin")))
    assert "srv-secret-folder" not in unexpected and "x.bin" in unexpected
    assert message(UserError("server at http://127.0.0.1:8080/v1 is down")).count("http://127.0.0.1:8080/v1") == 1
