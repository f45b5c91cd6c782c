"""GPU exploration of tiny-HART recipes (issue 14): encode once, train several recipes at once,
send back their EMA weights and loss histories. Run by explore.sh on the device."""
import json, os, subprocess, sys, time
from pathlib import Path
import torch

OUT = Path(os.environ["OUT"])
RUNS = Path(".device/runs")
BUDGET = float(sys.argv[1]) if len(sys.argv) > 1 else 480.0
DEVICE = os.environ.get("DEVICE", "cuda")
N = int(os.environ.get("N_EXAMPLES", "60000"))  # a local dry run uses a few hundred
STEP_DIV = int(os.environ.get("STEP_DIV", "1"))  # and divides the step counts
T0 = time.time()
log = open(OUT / "explore.log", "a")
def say(*a):
    msg = f"[{time.time() - T0:6.1f}s] " + " ".join(map(str, a))
    print(msg, flush=True); log.write(msg + "\n"); log.flush()

COMMON = ["--lr", "2e-3", "--two-shape-prob", "0.75", "--train-examples", str(N), "--no-bf16",
          "--threads", "2", "--save-dtype", "bfloat16", "--device", DEVICE]
RECIPES = {  # name: (layout, extra flags); longest first
    "rel-32x16000": ("relation", ["--steps", "16000", "--batch-size", "32"]),
    "rel-128x4000": ("relation", ["--steps", "4000", "--batch-size", "128"]),
    "rel-32x6000": ("relation", ["--steps", "6000", "--batch-size", "32"]),
    "rel-32x6000-bal05": ("relation", ["--steps", "6000", "--batch-size", "32", "--scale-balance", "0.5"]),
    "rel-32x6000-lr4e-3": ("relation", ["--steps", "6000", "--batch-size", "32", "--lr", "4e-3"]),
    "rel-32x4000": ("relation", ["--steps", "4000", "--batch-size", "32"]),
    "rel-32x4000-bal05": ("relation", ["--steps", "4000", "--batch-size", "32", "--scale-balance", "0.5"]),
}

from hart_edu.train.transformer import TrainSettings, train, load_scene_text_encoder
from transformers import AutoTokenizer
say("torch", torch.__version__, torch.cuda.get_device_name(0) if DEVICE == "cuda" else DEVICE)
if STEP_DIV > 1:
    for name, (layout, flags) in RECIPES.items():
        i = flags.index("--steps"); flags[i + 1] = str(int(flags[i + 1]) // STEP_DIV)

# 1. encode each layout's 60k scenes once (12 worker processes draw the images)
for layout in sorted({layout for layout, _ in RECIPES.values()}):
    s = TrainSettings(lr=2e-3, two_shape_prob=0.75, train_examples=N, layout=layout, bf16=False, threads=8)
    t = time.time()
    text = load_scene_text_encoder(s.context_token)
    train(Path("weights/tiny/tokenizer"), RUNS / f"enc-{layout}", s, progress=False, stop_at=0, device=DEVICE,
          workers=12, text=text.to(DEVICE))
    enc = torch.load(RUNS / f"enc-{layout}" / "encoded.pt", map_location="cpu", weights_only=True)
    kept = {int(i) for i in Path(os.environ["MINILM"], "kept_ids.txt").read_text().split()}
    tk = AutoTokenizer.from_pretrained(os.environ["MINILM"])
    used = {i for c in enc["captions"] for i in tk(c)["input_ids"]}
    assert used <= kept, f"captions use token ids the pruned encoder zeroed: {sorted(used - kept)}"
    say(f"encoded {layout}: {enc['idx_NK'].shape[0]} images, {len(enc['captions'])} captions in {time.time() - t:.0f} s; token ids ok")
    del enc

# 2. smoke: 30 steps, timed
s = TrainSettings(lr=2e-3, two_shape_prob=0.75, train_examples=N, layout="relation", bf16=False, steps=60 // min(STEP_DIV, 20),
                  batch_size=32, threads=2)
(RUNS / "smoke").mkdir(parents=True, exist_ok=True)
if not (RUNS / "smoke" / "encoded.pt").exists():
    os.symlink((RUNS / "enc-relation" / "encoded.pt").resolve(), RUNS / "smoke" / "encoded.pt")
r = train(Path("weights/tiny/tokenizer"), RUNS / "smoke", s, progress=False, device=DEVICE, text=text)
say(f"smoke: {s.steps} steps, ce {r.history[0]['ce']:.3f} -> {r.history[-1]['ce']:.3f}, {r.seconds:.1f} s incl. loading")
del r

# 3. every recipe in its own process, all at once
procs = {}
for name, (layout, flags) in RECIPES.items():
    run = RUNS / name
    run.mkdir(parents=True, exist_ok=True)
    if not (run / "encoded.pt").exists():
        os.symlink((RUNS / f"enc-{layout}" / "encoded.pt").resolve(), run / "encoded.pt")
    cmd = [sys.executable, "-m", "hart_edu.train.transformer", *COMMON, "--layout", layout, *flags,
           "--run", str(run), "--out", str(run / "llm"), "--report", str(run / "reports")]
    procs[name] = (subprocess.Popen(cmd, stdout=open(run / "log", "w"), stderr=subprocess.STDOUT), time.time())
    say("started", name)
deadline = T0 + BUDGET
while any(p.poll() is None for p, _ in procs.values()) and time.time() < deadline:
    time.sleep(5)
for name, (p, t) in procs.items():
    if p.poll() is None:
        p.kill(); p.wait()
        say(f"{name}: stopped at the deadline")
    else:
        say(f"{name}: exit {p.returncode} after {time.time() - t:.0f} s")
# runs stopped before their report: the history (and, before the weights were written, the
# EMA) of their last saved state (saved every 250 steps and at the end)
from safetensors.torch import save_file
for name in RECIPES:
    run = RUNS / name
    state_path = run / "state.pt"
    if not (run / "reports" / "transformer_history.json").exists() and state_path.exists():
        st = torch.load(state_path, map_location="cpu", weights_only=True)
        (run / "partial").mkdir(exist_ok=True)
        if not (run / "llm" / "ema_model.safetensors").exists():
            save_file({k: v.to(torch.bfloat16).contiguous() if v.is_floating_point() else v.contiguous()
                       for k, v in st["ema"].items()}, str(run / "partial" / "ema_model.safetensors"))
        (run / "partial" / "history.json").write_text(st["history"])
        (run / "partial" / "step.txt").write_text(str(st["step"]))
        say(f"{name}: partial at step {st['step']}")
say("done")
