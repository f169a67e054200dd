"""Defects that show only with several processes or devices, checked one by one in one process.

Where the situation needs hardware this machine lacks (several GPUs), the CUDA
calls are replaced by a small stand-in that keeps one generator state per device.
"""

from __future__ import annotations

import torch

from callbacks.atomic_checkpoint import AtomicCheckpointIO
from callbacks.exact_resume import collect_rng_states, set_rng_states


class FakeCudaGenerators:
    """One RNG state per device and a current device, behind the torch.cuda calls exact_resume uses."""

    def __init__(self, n_devices: int, current: int):
        self.states = [torch.tensor([0], dtype=torch.uint8) for _ in range(n_devices)]  # all freshly seeded
        self.current = current

    def install(self, monkeypatch) -> None:
        cuda = torch.cuda
        monkeypatch.setattr(cuda, "is_available", lambda: True)
        monkeypatch.setattr(cuda, "is_initialized", lambda: True)
        monkeypatch.setattr(cuda, "device_count", lambda: len(self.states))
        monkeypatch.setattr(cuda, "current_device", lambda: self.current)
        monkeypatch.setattr(cuda, "get_rng_state", lambda device="cuda": self.states[self._index(device)].clone())
        monkeypatch.setattr(cuda, "get_rng_state_all", lambda: [s.clone() for s in self.states])
        monkeypatch.setattr(cuda, "set_rng_state", self._set)
        monkeypatch.setattr(cuda, "set_rng_state_all", lambda states: [self._set(s, i) for i, s in enumerate(states)])

    def _index(self, device) -> int:
        device = torch.device(device)
        return self.current if device.index is None else device.index

    def _set(self, state, device="cuda") -> None:
        self.states[self._index(device)] = state.clone()

    def draw(self, n: int) -> None:
        """n random calls on the current device's generator."""
        self.states[self.current] = self.states[self.current] + n


def test_each_process_resumes_with_the_cuda_generator_state_its_own_device_had(monkeypatch):
    # two GPUs, one process each, same seed, same random calls: rank 0 on cuda:0, rank 1 on cuda:1
    rank0 = FakeCudaGenerators(2, current=0)
    rank0.install(monkeypatch)
    rank0.draw(7)
    saved = collect_rng_states()  # only rank 0 writes the checkpoint

    rank1 = FakeCudaGenerators(2, current=1)  # the resumed process of rank 1, freshly seeded
    rank1.install(monkeypatch)
    set_rng_states(saved)
    assert int(rank1.states[1]) == 7  # where rank 1's generator was when the checkpoint was taken
    assert int(rank1.states[0]) == 0  # a device this process does not use is left alone


def test_a_checkpoint_of_the_old_format_restores_rank_0s_device_state(monkeypatch):
    resumed = FakeCudaGenerators(2, current=1)
    resumed.install(monkeypatch)
    old = {"torch": torch.get_rng_state(), "numpy": collect_rng_states()["numpy"],
           "python": collect_rng_states()["python"],
           "torch.cuda": [torch.tensor([7], dtype=torch.uint8), torch.tensor([0], dtype=torch.uint8)]}
    set_rng_states(old)
    assert int(resumed.states[1]) == 7


def test_checkpoints_are_read_onto_the_cpu_whatever_device_saved_them(tmp_path, monkeypatch):
    """Resuming or testing a checkpoint goes through train.py's CheckpointIO: every process reads it into
    CPU memory (Lightning then moves the weights to the process's own device), none onto cuda:0."""
    import lightning_fabric.plugins.io.torch_io as torch_plugin  # where TorchCheckpointIO reads

    seen = {}
    real_load = torch_plugin.pl_load

    def spy(path, map_location=None, weights_only=None):
        seen["map_location"] = map_location
        return real_load(path, map_location=map_location, weights_only=weights_only)

    monkeypatch.setattr(torch_plugin, "pl_load", spy)
    path = tmp_path / "x.ckpt"
    AtomicCheckpointIO().save_checkpoint({"w": torch.ones(2)}, path)
    loaded = AtomicCheckpointIO().load_checkpoint(path)
    assert torch.equal(loaded["w"], torch.ones(2))
    cpu_storage = torch.ones(1).untyped_storage()
    # what torch.load does with a storage saved on cuda:0: the map_location keeps it where it is (CPU)
    assert seen["map_location"](cpu_storage, "cuda:0") is cpu_storage


def test_coteaching_selection_counts_are_counted_once_after_a_two_process_resume():
    """Each process counts the small-loss picks of its own share of the samples; detection sums the counts
    over processes. The checkpoint (rank 0 writes it) must hold the sum, and on resume only one process may
    take it back, or the counts before the kill are lost for rank 1's share and doubled for rank 0's."""
    from types import SimpleNamespace

    from lightning_modules import CoTeaching
    from lightning_modules.backbones import MLP

    # row 0: places offered (2 per step the sample was in), row 1: places taken; 4 samples
    share0 = torch.tensor([[2.0, 0.0, 4.0, 0.0], [1.0, 0.0, 3.0, 0.0]])  # rank 0 trained on samples 0 and 2
    share1 = torch.tensor([[0.0, 2.0, 0.0, 2.0], [0.0, 2.0, 0.0, 0.0]])  # rank 1 on samples 1 and 3

    def summed(tensor, reduce_op):
        assert reduce_op == "sum"
        return share0 + share1  # what a sum over the two processes gives rank 0

    def module(rank, selection=None):
        m = CoTeaching(MLP(input_channel=2, n_outputs=4, image_size=1, hidden=(8,)), num_classes=4)
        m._trainer = SimpleNamespace(world_size=2, global_rank=rank, strategy=SimpleNamespace(reduce=summed))
        m._selection = selection
        return m

    saved: dict = {}
    module(0, share0.clone()).on_save_checkpoint(saved)
    (state,) = saved.values()
    assert torch.equal(state["selection"], share0 + share1)
    restored = []
    for rank in (0, 1):  # every process loads the same file
        m = module(rank)
        m.on_load_checkpoint(saved)
        restored.append(m._selection)
    assert torch.equal(restored[0] + restored[1], share0 + share1)
