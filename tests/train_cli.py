"""``python train.py`` in a subprocess, and the faults tests/test_failure_table.py injects into it.

:func:`train_py` runs the command line and :func:`expect` checks how it ended; :class:`World` holds the
folders, files and command lines of the failure table's cases, :class:`Cases` a module's list of them
(``tests/failure_table_inputs.py``, ``tests/failure_table_training.py``). The CLI takes any
Lightning callback from the config (``+callbacks.<name>._target_=…``), so a test adds the fault callbacks
below with ``PYTHONPATH=tests`` and the command line alone. :class:`Fault` is inert unless the environment
variable :data:`FAULT_ENV` asks for a fault: the crashed run and its re-run then have the same command
(and run record), as after a real crash. :func:`build_models` writes the model folders, among them
reward models whose weights were broken on disk (NaN, constant or huge scores).
"""

from __future__ import annotations

import atexit
import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from safetensors.torch import load_file

from lit_rlhf.run.errors import EXIT_USER_ERROR

ROOT = Path(__file__).resolve().parents[1]
TRACEBACK = "Traceback (most recent call last)"
ITERATIONS = 6  # of the resumable PPO run

# sampling settings some instruct checkpoints ship in generation_config.json; rollouts must ignore them
SHIPPED = {"do_sample": True, "repetition_penalty": 3.0, "no_repeat_ngram_size": 1, "top_k": 5, "min_p": 0.3}
POISON = " Paris"  # text whose tokens the `rm_poison` reward model scores as NaN
FAULT_ENV = "LIT_RLHF_TEST_FAULT"  # "<crash|kill|kill_in_save>@<iteration>[@job<n>]"
FAULT = "+callbacks.fault._target_=train_cli.Fault"  # the override that installs it


# ------------------------------------------------------------------ running train.py
@dataclass(frozen=True)
class Run:
    rc: int
    out: str  # stdout + stderr


def train_py(
    root: Path, cache: Path, *overrides: str, env: dict | None = None, multirun: bool = False
) -> Run:
    """``python train.py [-m] paths.root_dir=<root> paths.cache_dir=<cache> logger=none … <overrides>``.

    Without ``-m`` the run folder is ``<root>/run`` unless ``overrides`` set ``hydra.run.dir``. The command
    runs in a process forked from :class:`ForkServer` (one interpreter start-up per session instead of one
    per run) where ``os.fork`` exists, unless ``LIT_RLHF_TEST_SPAWN=1`` asks for a fresh ``python``.
    """
    cmd = [str(ROOT / "train.py"), *(["-m"] if multirun else [])]
    cmd += [f"paths.root_dir={root}", f"paths.cache_dir={cache}", "logger=none"]
    cmd += ["trainer.enable_progress_bar=false"]
    if not multirun and not any(o.startswith("hydra.run.dir=") for o in overrides):
        cmd.append(f"hydra.run.dir={root / 'run'}")
    env = {**os.environ, **BASE_ENV, **(env or {})}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), env.get("PYTHONPATH", "")])  # this module
    if hasattr(os, "fork") and os.environ.get("LIT_RLHF_TEST_SPAWN") != "1":
        return ForkServer.get().run([*cmd, *overrides], env, timeout=600)
    out = subprocess.run(
        [sys.executable, *cmd, *overrides], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    return Run(out.returncode, out.stdout + out.stderr)


BASE_ENV = {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}

# The fork server: imports what train.py imports, then forks one child per request. A child takes the
# request's environment, argv and output files and runs train.py as `python train.py` would (`__main__`,
# an uncaught exception printed with its traceback and exit status 1, atexit handlers at the end); the
# server answers with the child's pid, then with its exit status (-9 after kill -9, as subprocess says).
_SERVER = r"""
import atexit, json, os, runpy, sys, traceback
import hydra, lightning, torch, transformers  # noqa: F401  (the start-up every run would pay)
import lit_rlhf.run.errors, lit_rlhf.run.pipeline  # noqa: F401
print("ready", flush=True)
for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, req["out"], os.O_WRONLY | os.O_CREAT),
                                    (2, req["err"], os.O_WRONLY | os.O_CREAT)):
                os.dup2(os.open(path, flags), fd)
            os.environ.clear()
            os.environ.update(req["env"])
            sys.argv, sys.path[0] = req["argv"], os.path.dirname(req["argv"][0])
            try:
                runpy.run_path(req["argv"][0], run_name="__main__")
                code = 0
            except SystemExit as e:
                if e.code is None or isinstance(e.code, int):
                    code = e.code or 0
                else:
                    print(e.code, file=sys.stderr)
            except BaseException:
                traceback.print_exc()
            atexit._run_exitfuncs()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    print(json.dumps(pid), flush=True)
    print(json.dumps(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])), flush=True)
"""


class ForkServer:
    """One per test session (:meth:`get`), started on first use, stopped at exit."""

    _instance: ForkServer | None = None

    def __init__(self) -> None:
        env = {**os.environ, **BASE_ENV}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout.readline().strip() == "ready", "the train.py fork server did not start"

    @classmethod
    def get(cls) -> ForkServer:
        if cls._instance is None or cls._instance.proc.poll() is not None:
            cls._instance = cls()
            atexit.register(cls._instance.stop)
        return cls._instance

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)

    def run(self, argv: list[str], env: dict[str, str], timeout: float) -> Run:
        with tempfile.TemporaryDirectory() as tmp:
            out, err = Path(tmp) / "out", Path(tmp) / "err"
            request = {"argv": argv, "env": env, "out": str(out), "err": str(err)}
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            pid, expired = json.loads(self.proc.stdout.readline()), []
            timer = threading.Timer(timeout, lambda: expired.append(1) or os.kill(pid, signal.SIGKILL))
            timer.start()
            try:
                rc = json.loads(self.proc.stdout.readline())
            finally:
                timer.cancel()
            if expired:
                raise subprocess.TimeoutExpired(["train.py", *argv[1:]], timeout)
            return Run(rc, out.read_text(errors="replace") + err.read_text(errors="replace"))


def expect(run: Run, status: int, *fragments: str) -> None:
    """``run`` ended with ``status``, printed no traceback and every fragment."""
    tail = run.out[-3000:]
    assert run.rc == status, f"exit status {run.rc}, expected {status}:\n{tail}"
    assert TRACEBACK not in run.out, tail
    for fragment in fragments:
        assert fragment in run.out, f"{fragment!r} not in the output:\n{tail}"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(folder: Path) -> dict[str, str]:
    """Hash of every file under ``folder`` but Hydra's (``.hydra/``, ``*.log``: every command rewrites them
    before lit_rlhf runs)."""
    files = [p for p in folder.rglob("*") if p.is_file() and p.suffix != ".log" and ".hydra" not in p.parts]
    return {str(p.relative_to(folder)): sha(p) for p in files}


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def csv_logger(run_dir: Path) -> list[str]:
    """Overrides that add Lightning's CSV logger (``metrics.csv`` under ``run_dir``)."""
    return ["+logger.csv._target_=lightning.pytorch.loggers.CSVLogger", f"+logger.csv.save_dir={run_dir}"]


def logged(run_dir: Path, name: str) -> list[float]:
    """Every value of ``name`` in the run's CSV log, in order."""
    (path,) = run_dir.rglob("metrics.csv")
    with path.open() as f:
        return [float(row[name]) for row in csv.DictReader(f) if row.get(name)]


def same_weights(a: Path, b: Path) -> bool:
    """Whether two model folders hold equal ``model.safetensors``, bit for bit."""
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def same_result(a: Path, b: Path) -> None:
    """Final actor (saved policy), critic, β and iteration of two run folders are equal, bit for bit."""
    assert same_weights(a / "model", b / "model"), f"the policies of {a} and {b} differ"
    ca, cb = (torch.load(d / "checkpoints" / "last.ckpt", weights_only=True) for d in (a, b))
    assert ca["ppo_iteration"] == cb["ppo_iteration"] == ITERATIONS
    assert ca["kl_controller"] == cb["kl_controller"] and ca["kl_controller"]["value"] != 0.05  # β moved
    critic = [k for k in ca["state_dict"] if k.startswith("critic.")]
    assert critic and all(torch.equal(ca["state_dict"][k], cb["state_dict"][k]) for k in critic)


# ------------------------------------------------------------------ the cases
@dataclass(frozen=True)
class Case:
    row: str  # a key of test_failure_table.ROWS
    name: str
    check: Callable[..., None]  # check(w, tmp, *args)
    args: tuple = ()


class Cases(list[Case]):
    """A module's cases in order, test ids ``<row>-<name>``; :meth:`case` and :meth:`refused` add one."""

    def case(self, row: str, name: str, *args):
        """Register the decorated ``check(w, tmp, *args)`` as the case ``<row>-<name>``."""

        def register(check: Callable[..., None]) -> Callable[..., None]:
            self.append(Case(row, name, check, args))
            return check

        return register

    def refused(
        self, row: str, name: str, overrides: Callable[[World, Path], list[str]], *fragments: str
    ) -> None:
        """A case that must stop with exit status 2 and ``lit_rlhf: error: …`` holding every fragment."""

        def check(w: World, tmp: Path) -> None:
            expect(w.train_py(tmp, *overrides(w, tmp)), EXIT_USER_ERROR, "lit_rlhf: error: ", *fragments)

        self.append(Case(row, name, check))


# ------------------------------------------------------------------ the world of the cases
class World:
    """Model folders, data files and a shared cache dir for the cases; runs several cases share."""

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.cache = tmp, tmp / "cache"
        self.m = build_models(tmp / "models")
        pairs = [{"prompt": f"about cats {i}", "chosen": "cats purr", "rejected": "no"} for i in range(40)]
        self.pairs = write_jsonl(tmp / "pairs.jsonl", pairs)
        self.prompts = write_jsonl(tmp / "prompts.jsonl", [{"prompt": p["prompt"]} for p in pairs])
        self._shared: dict[str, Path] = {}

    def train_py(self, root: Path, *overrides: str, cache: Path | None = None, **kw) -> Run:
        """:func:`train_cli.train_py` with this world's cache dir unless ``cache`` is given."""
        return train_py(root, cache or self.cache, *overrides, **kw)

    # the command lines of the three kinds of job
    def rm(self, data: Path, model: str = "policy") -> list[str]:
        return ["task=reward_model", "reward=helpful", "model=hf", f"model.name_or_path={self.m[model]}",
                "data=jsonl", f"data.path={data}", "task.max_epochs=1", "task.datamodule.batch_size=8",
                "task.module.warmup_steps=0"]  # fmt: skip

    def sft_job(self, data: Path, model: str = "policy") -> list[str]:
        return ["task=sft", *self.rm(data, model)[2:]]

    def ppo(self, policy: str = "policy", rm: str = "rm", prompts: Path | None = None) -> list[str]:
        return ["model=hf", f"model.name_or_path={self.m[policy]}", f"task.policy_path={self.m[policy]}",
                "reward=helpful", f"reward.helpful.path={self.m[rm]}", "data=jsonl",
                f"data.path={prompts or self.prompts}", "task.iterations=2", "task.val_check_interval=2",
                "task.datamodule.batch_size=4", "task.module.eval_samples_per_prompt=1",
                "task.module.max_new_tokens=8", "task.callbacks.reward_transform.n_samples=2",
                "task.optimized_metric=ppo/kl"]  # fmt: skip

    def resumable(self) -> list[str]:
        """PPO that checkpoints every 2 of its 6 iterations, with adaptive β and the fault callback."""
        return [*self.ppo(), f"task.iterations={ITERATIONS}", "task.val_check_interval=3",
                "task.checkpoint_every_n_steps=2", "task.module.kl_target=1.0", FAULT]  # fmt: skip

    def shared(self, name: str, overrides: Callable[[], list[str]], **kw) -> Path:
        """The run folder of ``overrides`` run once to completion (for the cases that start from it)."""
        if name not in self._shared:
            root = self.tmp / "shared" / name
            expect(self.train_py(root, *overrides(), **kw), 0)
            self._shared[name] = root / "run"
        return self._shared[name]

    def finished_rm(self) -> Path:
        return self.shared("finished_rm", lambda: self.rm(self.pairs))

    def uninterrupted(self) -> Path:
        return self.shared("uninterrupted", self.resumable, cache=self.tmp / "shared" / "uninterrupted_cache")


# ------------------------------------------------------------------ faults
class Evil:
    """Unpickling it runs code: it writes the file ``marker`` (what ``weights_only=True`` must refuse)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",))


class Fault(L.Callback):
    """At a PPO iteration: ``crash`` raises (a bug mid-training), ``kill`` is ``kill -9`` of the process,
    ``kill_in_save`` is ``kill -9`` half-way through writing that iteration's checkpoint. ``@job<n>``: only
    in job n of a ``-m`` sweep."""

    def __init__(self) -> None:
        parts = os.environ.get(FAULT_ENV, "").split("@")
        self.what, self.at = parts[0], int(parts[1]) if len(parts) > 1 else -1
        self.job = int(parts[2].removeprefix("job")) if len(parts) > 2 else None

    def _armed(self) -> bool:
        return bool(self.what) and (self.job is None or HydraConfig.get().job.num == self.job)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self._armed() or pl_module.iteration != self.at:
            return
        if self.what == "crash":
            raise SystemError(f"simulated crash at iteration {self.at}")
        if self.what == "kill":
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_start(self, trainer, pl_module) -> None:
        if not self._armed() or self.what != "kill_in_save":
            return
        real = torch.save

        def dying_save(obj, f, *args, **kwargs):  # iteration `at`'s checkpoint: half written, then killed
            if isinstance(obj, dict) and obj.get("ppo_iteration") == self.at:
                f.write(b"half a checkpoint")
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            return real(obj, f, *args, **kwargs)

        torch.save = dying_save


class RecordSaves(L.Callback):
    """Appends the PPO iteration of every checkpoint the run writes to the JSON list in ``path``."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        saved = json.loads(self.path.read_text()) if self.path.is_file() else []
        self.path.write_text(json.dumps([*saved, pl_module.iteration]))


def build_models(out: Path) -> dict[str, Path]:
    """Tiny GPT-2 / Llama folders on one tokenizer each (name → folder).

    ``policy``, ``rm`` (a random reward model on its tokenizer), ``chat`` (Llama with a ChatML template),
    ``gencfg`` (a policy shipping :data:`SHIPPED`), and broken reward models: ``rm_nan`` (every score NaN),
    ``rm_const`` (every score 0), ``rm_huge`` (|score| ~ 1e4), ``rm_poison`` (NaN exactly for sequences
    holding a token of :data:`POISON`) with ``policy_nan``, a policy that can never sample those tokens
    (their logit is -5e4 whatever the input), so only prompts bring them in.
    """
    from tiny_hf import make_config, make_model_folder, make_tokenizer  # noqa: PLC0415
    from transformers import AutoModelForSequenceClassification, GPT2LMHeadModel  # noqa: PLC0415

    folders = {
        "policy": make_model_folder("gpt2", out / "policy"),
        "chat": make_model_folder("llama", out / "chat"),
        "gencfg": make_model_folder("gpt2", out / "gencfg", generation_config=SHIPPED),
    }
    tok = make_tokenizer("gpt2")
    poison = sorted(set(tok.encode(POISON)) - set(tok.encode("about cats 0123456789")))
    assert poison, "the poison text shares every token with the clean prompts"

    def rm(name: str, edit=None) -> None:
        cfg = make_config("gpt2", tok)
        cfg.num_labels, cfg.pad_token_id = 1, tok.eos_token_id
        torch.manual_seed(1)
        model = AutoModelForSequenceClassification.from_config(cfg)
        with torch.no_grad():
            if edit is not None:
                edit(model)
        model.save_pretrained(out / name)
        tok.save_pretrained(out / name)
        folders[name] = out / name

    rm("rm")
    rm("rm_nan", lambda m: m.score.weight.fill_(float("nan")))
    rm("rm_const", lambda m: m.score.weight.zero_())
    rm("rm_huge", lambda m: m.score.weight.mul_(1e5))
    rm("rm_poison", lambda m: m.transformer.wte.weight.index_fill_(0, torch.tensor(poison), float("nan")))
    cfg = make_config("gpt2", tok)
    cfg.tie_word_embeddings = False
    torch.manual_seed(0)
    policy = GPT2LMHeadModel(cfg)
    with torch.no_grad():  # hidden[0] = 50 after the final norm, so the poison logits are 50 · -1000
        policy.transformer.ln_f.weight[0], policy.transformer.ln_f.bias[0] = 0.0, 50.0
        policy.lm_head.weight[poison] = 0.0
        policy.lm_head.weight[poison, 0] = -1000.0
    policy.save_pretrained(out / "policy_nan")
    tok.save_pretrained(out / "policy_nan")
    folders["policy_nan"] = out / "policy_nan"
    return folders
