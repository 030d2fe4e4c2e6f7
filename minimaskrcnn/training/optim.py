"""SGD with momentum and weight decay (``torch.optim.SGD`` semantics) and Detectron2's
``WarmupMultiStepLR`` schedule (linear warm-up, then x gamma at each milestone).

One SGD step, for every parameter ``p`` with gradient ``g`` (torch's order: the decay is added
to the gradient *before* the momentum buffer, no dampening, no Nesterov)::

    d = g + weight_decay * p
    buf = d                       on the first step (torch clones d)
    buf = momentum * buf + d      afterwards
    p -= lr * buf

Typical use (the training loop)::

    opt = SGD(model.named_parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    sched = WarmupMultiStepLR(opt, milestones=(2000, 2600), gamma=0.1,
                              warmup_factor=0.001, warmup_iters=200)
    for t in range(T):            # opt.lr == sched.lr_at(t) here
        ... forward, model.zero_grad(), backward ...
        opt.step()
        sched.step()              # sets opt.lr = lr_at(t + 1)
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

from minimaskrcnn.backend import (
    device_module,
    get_array_module,
    is_cupy_array,
    to_device,
    to_numpy,
)
from minimaskrcnn.nn.module import Param


class SGD:
    """Stochastic gradient descent with momentum and L2 weight decay (torch.optim.SGD).

    Args:
        params: an iterable of :class:`~minimaskrcnn.nn.Param`, or of ``(name, Param)`` pairs
            (``model.named_parameters()``; then the state is keyed by name, which survives a
            change in parameter order). Each parameter is updated once even if listed twice.
        lr: learning rate (> 0), can be changed between steps (``opt.lr = ...``).
        momentum: in [0, 1); 0 disables the buffer.
        weight_decay: >= 0, applied to every parameter given.

    Raises:
        ValueError: bad hyper-parameters or no parameters.
        TypeError: an element of ``params`` is not a Param (or a (name, Param) pair).
    """

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9,
                 weight_decay: float = 1e-4):
        if not lr > 0:
            raise ValueError(f"SGD: lr must be > 0, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"SGD: momentum must be in [0, 1), got {momentum}")
        if not weight_decay >= 0:
            raise ValueError(f"SGD: weight_decay must be >= 0, got {weight_decay}")
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self.names: list[str] = []
        self.params: list[Param] = []
        seen: set[int] = set()
        for i, item in enumerate(params):
            name, p = item if isinstance(item, tuple) else (str(i), item)
            if not isinstance(p, Param):
                raise TypeError(f"SGD: parameter {name} is a {type(p).__name__}, not a Param")
            if id(p) in seen:
                continue
            seen.add(id(p))
            self.names.append(str(name))
            self.params.append(p)
        if not self.params:
            raise ValueError("SGD: got an empty parameter list")
        self.buffers: list = [None] * len(self.params)  # momentum buffers, created on step 1
        self.steps = 0

    def zero_grad(self) -> None:
        """Zero the gradients of the parameters this optimiser updates."""
        for p in self.params:
            p.zero_grad()

    def step(self) -> None:
        """Update every parameter in place from its ``.grad`` (see the module docstring)."""
        lr, mom, wd = self.lr, self.momentum, self.weight_decay
        for i, p in enumerate(self.params):
            d = p.grad + wd * p.data if wd else p.grad.copy()
            if mom:
                if self.buffers[i] is None:
                    self.buffers[i] = d
                else:
                    buf = self.buffers[i]
                    buf *= mom
                    buf += d
                d = self.buffers[i]
            p.data -= lr * d
        self.steps += 1

    def state_dict(self) -> dict:
        """``{"lr", "momentum", "weight_decay", "steps": scalars, "buffers": {name: array}}``
        (NumPy copies; parameters without a buffer yet are absent)."""
        return {
            "lr": self.lr,
            "momentum": self.momentum,
            "weight_decay": self.weight_decay,
            "steps": self.steps,
            "buffers": {n: to_numpy(b).copy() for n, b in zip(self.names, self.buffers,
                                                               strict=True) if b is not None},
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned (buffers copied to the parameters' array
        module and dtype).

        Raises:
            KeyError: a buffer names no parameter of this optimiser.
            ValueError: a buffer's shape differs from its parameter's.
        """
        self.lr = float(state["lr"])
        self.momentum = float(state["momentum"])
        self.weight_decay = float(state["weight_decay"])
        self.steps = int(state.get("steps", 0))
        index = {n: i for i, n in enumerate(self.names)}
        buffers: list = [None] * len(self.params)
        for name, value in state.get("buffers", {}).items():
            if name not in index:
                raise KeyError(f"SGD.load_state_dict: buffer {name!r} matches no parameter")
            p = self.params[index[name]]
            if tuple(value.shape) != p.shape:
                raise ValueError(f"SGD.load_state_dict: buffer {name!r} has shape "
                                 f"{tuple(value.shape)}, the parameter {p.shape}")
            xp = get_array_module(p.data)
            if not is_cupy_array(p.data):
                value = to_numpy(value)  # a buffer saved from the GPU, loaded on the CPU
            buffers[index[name]] = xp.array(value, dtype=p.data.dtype)
        self.buffers = buffers

    def to(self, xp) -> SGD:
        """Move the momentum buffers to the array module ``xp`` (``numpy`` or ``cupy``, or
        ``"cpu"`` / ``"cuda"``); returns self. The parameters are the model's own
        :class:`Param` objects, so ``model.to(xp)`` moves them (before or after this call);
        buffers made later follow the gradients' device anyway.
        """
        if isinstance(xp, str):
            xp = device_module(xp)
        self.buffers = [None if b is None else to_device(b, xp) for b in self.buffers]
        return self


def warmup_multistep_lr(iteration: int, base_lr: float, milestones=(), gamma: float = 0.1,
                        warmup_factor: float = 0.001, warmup_iters: int = 1000,
                        warmup_method: str = "linear") -> float:
    """Detectron2's ``WarmupMultiStepLR`` learning rate at ``iteration`` (0-based).

    ``base_lr * warmup * gamma ** (number of milestones <= iteration)`` with
    ``warmup = warmup_factor * (1 - a) + a``, ``a = iteration / warmup_iters`` for
    ``iteration < warmup_iters`` ("linear"; "constant" uses ``warmup_factor``), else 1.
    So ``lr(0) = base_lr * warmup_factor``, ``lr(warmup_iters) = base_lr``, and the decay
    applies from the milestone iteration itself on (``bisect_right``). Returns a Python float.

    Raises:
        ValueError: ``warmup_method`` is neither "linear" nor "constant" (at any iteration).
    """
    if warmup_method not in ("linear", "constant"):
        raise ValueError(f"unknown warmup_method {warmup_method!r}")
    if iteration >= warmup_iters:
        factor = 1.0
    elif warmup_method == "linear":
        alpha = iteration / warmup_iters
        factor = warmup_factor * (1 - alpha) + alpha
    else:
        factor = warmup_factor
    return base_lr * factor * gamma ** bisect.bisect_right(list(milestones), iteration)


class WarmupMultiStepLR:
    """Linear warm-up then multi-step decay (Detectron2), driving an :class:`SGD`'s ``lr``.

    Args:
        optimizer: an :class:`SGD` (its ``lr`` at construction is the base learning rate and is
            overwritten with ``lr_at(iteration)``), or a float base learning rate (then the
            schedule is just a function of the iteration).
        milestones: increasing iterations at which the lr is multiplied by ``gamma``.
        gamma: decay factor.
        warmup_factor: lr multiplier at iteration 0.
        warmup_iters: length of the warm-up (0: none).
        warmup_method: "linear" or "constant".
        last_iter: the current iteration (0 for a new run; the checkpoint's for a resume).

    ``lr_at(t)`` / ``sched(t)`` give the lr of iteration ``t``; ``get_lr()`` the current one;
    ``step()`` advances one iteration. Setting ``last_iter`` also sets the optimiser's lr.

    Raises:
        ValueError: milestones not increasing, negative warm-up, bad method.
    """

    def __init__(self, optimizer, milestones=(), gamma: float = 0.1,
                 warmup_factor: float = 0.001, warmup_iters: int = 1000,
                 warmup_method: str = "linear", last_iter: int = 0):
        self.optimizer = optimizer if isinstance(optimizer, SGD) else None
        self.base_lr = float(optimizer.lr if self.optimizer is not None else optimizer)
        self.milestones = tuple(int(m) for m in milestones)
        if list(self.milestones) != sorted(set(self.milestones)):
            raise ValueError(f"milestones must be strictly increasing, got {milestones}")
        if warmup_iters < 0:
            raise ValueError(f"warmup_iters must be >= 0, got {warmup_iters}")
        if warmup_method not in ("linear", "constant"):
            raise ValueError(f"unknown warmup_method {warmup_method!r}")
        self.gamma = float(gamma)
        self.warmup_factor = float(warmup_factor)
        self.warmup_iters = int(warmup_iters)
        self.warmup_method = warmup_method
        self.last_iter = last_iter

    @property
    def last_iter(self) -> int:
        return self._last_iter

    @last_iter.setter
    def last_iter(self, value: int) -> None:
        self._last_iter = int(value)
        if self.optimizer is not None:
            self.optimizer.lr = self.lr_at(self._last_iter)

    def lr_at(self, iteration: int) -> float:
        return warmup_multistep_lr(iteration, self.base_lr, self.milestones, self.gamma,
                                   self.warmup_factor, self.warmup_iters, self.warmup_method)

    __call__ = lr_at

    def get_lr(self) -> float:
        """The learning rate of the current iteration ``last_iter``."""
        return self.lr_at(self._last_iter)

    def step(self) -> None:
        """Advance to the next iteration (and set the optimiser's lr for it)."""
        self.last_iter = self._last_iter + 1
