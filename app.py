"""ftbench's web app: chat, a spam classifier, a poem writer, base-vs-fine-tuned comparison with blind votes, and
the leaderboard, on this machine's CPU.

    python app.py                          # http://127.0.0.1:7860 with the embedded default model
    python app.py --port 7861 --judge transformers:smollm2-135m-instruct    # an offline judge for Compare
    python app.py --model /path/to/model_dir --no-warmup
    python app.py --host 0.0.0.0           # listen on every interface (or --share for a gradio.live link)
    python app.py --engine openai:smol@http://127.0.0.1:8080     # chat and free poems through a server
    python app.py --checkpoints ~/runs --max-models 2   # Compare any two: bases, adapters, checkpoints in ~/runs

The URL is printed first; the page is up within seconds, and the model loads (on an empty cache: converts,
one-time, about a minute) in the background while the header says so.

From Python (gradio_client); stable endpoints /chat, /classify, /poem, /compare:

    from gradio_client import Client
    c = Client("http://127.0.0.1:7860/")
    history, _, prompt, info = c.predict("Hi!", [], "", "base", 0.3, 0.9, 128, 0, 1.1, api_name="/chat")
    label, verdict = c.predict("WIN a prize! Claim now", "base", 0.5, api_name="/classify")

The sampling arguments are named temperature, top_p, max_new_tokens, seed, repetition_penalty. Chat history is
Gradio 6's messages format, as /chat returns it: pass it back to continue the conversation.
This file only reads the flags and launches: the page is harness/app/page.py, one module per tab in harness/app/.
Under SYSTEM=spaces (a Hugging Face Space) the app is shared by every visitor: answers are capped, the queue is
short, votes belong to the browser session that cast them, and nothing is written into results/.
"""

import argparse
import logging
import os
import sys
import threading
from pathlib import Path

from harness.app.page import build_demo, launch  # noqa: F401 - the app's API for tests and scripts
from harness.app.server import app_engine, choose_engine
from harness.app.state import AppState, auto_threads
from harness.app.widgets import default_sampling, guard  # noqa: F401 - re-exported for tests
from harness.errors import UserError
from harness.judge import DEFAULT_JUDGE, DEFAULT_OFFLINE_JUDGE

log = logging.getLogger("ftbench.app")
DESCRIPTION = ("ftbench's web app: chat with a small language model, classify SMS spam, write poems, compare a "
               "base model with its LoRA fine-tuned adapter (with blind votes) and browse the leaderboard, all on "
               "this machine's CPU. Open the printed URL in a browser.")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python app.py", description=DESCRIPTION,
                                     epilog="On a Hugging Face Space (SYSTEM=spaces) answers are capped at 256 new "
                                            "tokens, votes go to the Space's persistent storage when it has one, "
                                            "and nothing is written into results/.")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="interface to bind (default 127.0.0.1, or $GRADIO_SERVER_NAME as on Spaces); "
                             "0.0.0.0 exposes the app to the network")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
                        help="port to listen on (default 7860, or $GRADIO_SERVER_PORT)")
    parser.add_argument("--share", action="store_true", help="also create a public gradio.live link")
    parser.add_argument("--model", default=None,
                        help="base model: a registry name, a local model directory or a .gguf (default: embedded)")
    parser.add_argument("--judge", default=DEFAULT_JUDGE,
                        help=f"judge for the compare tab (default {DEFAULT_JUDGE}; offline: {DEFAULT_OFFLINE_JUDGE}, "
                             "which Compare offers when the judge gives no scores)")
    parser.add_argument("--judge-timeout", type=float, default=60.0,
                        help="seconds to wait for one judge answer (default 60)")
    parser.add_argument("--engine", default="auto", metavar="ENGINE",
                        help="chat engine: auto (default: llama.cpp when llama-cpp-python is installed, else "
                             "transformers, said in the header), transformers, llama.cpp, openai:<model>@<url> "
                             "(vLLM, llama.cpp's server) or ollama:<model>; chat and free poems go there, and fall "
                             "back to transformers with a one-line notice for the form constraint, an adapter the "
                             "engine cannot serve, or a server that is down")
    parser.add_argument("--checkpoints", default="checkpoints", metavar="DIR",
                        help="folder of checkpoints visitors may pick in Compare and as the base (full fine-tune "
                             "folders, .gguf, .pth); names never reach outside it (default: checkpoints/ here)")
    parser.add_argument("--max-models", type=int, default=2, metavar="N",
                        help="models held in memory at once, the base in use included; comparing two different "
                             "models needs 2 (default 2; the least recently used is freed)")
    parser.add_argument("--no-warmup", action="store_true", help="skip the warm-up generation at start")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (default 0 = the cores not busy with other work, at least 1)")
    return parser.parse_args(argv)


def pick_engine(engine: str) -> str:
    """The chat engine to use (harness.app.server.choose_engine); its note, if any, on stderr."""
    chosen, note = choose_engine(engine)
    if note:
        print(f"note: {note}", file=sys.stderr)
    return chosen


def main(argv: list[str] | None = None) -> int:
    from harness import quiet_libraries
    quiet_libraries()              # before torch/transformers load: no progress bars or renamed-method warnings
    from harness.paths import on_spaces
    args = parse_args(argv)
    try:
        args.engine = app_engine(args.engine)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    shown_host = "127.0.0.1" if args.host in ("0.0.0.0", "") else args.host
    print(f"ftbench app: http://{shown_host}:{args.port}/  (the page is up in seconds; the model loads behind it)",
          flush=True)
    threads = args.threads if args.threads > 0 else auto_threads()
    engine, note = choose_engine(args.engine)
    if note:
        print(f"note: {note}", file=sys.stderr)
    try:
        from harness.paths import votes_store_path
        state = AppState(model=args.model, judge=args.judge, judge_timeout=args.judge_timeout, engine=engine,
                         threads=threads, adapt_threads=args.threads <= 0, spaces=on_spaces(),
                         store=str(votes_store_path()), start_note=note,
                         checkpoints=Path(args.checkpoints).resolve(), max_models=max(1, args.max_models))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from harness.models import base_status
    converting = base_status(state.spec) == "needs conversion"
    # Start-up order, measured on 2 cores (python -m harness bench app): importing peft + torch + transformers takes
    # about 6 s and gradio about 5 s, all pure Python under the GIL, so doing both before the page was up made it
    # 12-14 s. The page comes first (gradio only); the model stack is imported and the model prepared in a thread
    # once the page is served, while the header says the model is being prepared.

    def prepare():
        try:
            state.import_model_stack()          # under the model lock: a request loading a model waits for it
            if engine != "llama.cpp":           # on llama.cpp torch is imported (its threads set) only when a job
                import torch                    # needs the transformers copy (AppState's first load)
                torch.set_num_threads(threads)
            log.info("torch threads: %d", threads)
            seconds = state.prepare(warmup=not args.no_warmup)
            if not args.no_warmup:
                log.info("warm-up took %.1f s", seconds)
            log.info("model %s ready", state.base_name)
        except BaseException as e:  # noqa: BLE001 - shown in the page's status line
            log.error("loading %s failed: %s", state.base_name, e)

    loader = threading.Thread(target=prepare, name="ftbench-load", daemon=True)
    state.begin_prepare()
    demo = build_demo(state)
    launch(demo, host=args.host, port=args.port, share=args.share, block=False)
    if converting:
        log.info("preparing the model (one-time, about a minute): converting the embedded GGUF in the background")
    loader.start()
    try:
        demo.block_thread()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
