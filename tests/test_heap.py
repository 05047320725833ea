import subprocess
import sys

import pytest

from smallvision import cli, heap

# Blocks of 64 MB, past glibc's largest mmap threshold: by default each is mapped afresh and comes from
# the kernel a 4 KB page fault at a time. Kept, they are reused once the heap has grown enough: PyTorch
# asks for aligned blocks (posix_memalign), a little more than a freed block holds, so the heap first
# grows by a few blocks (seven here) before freed ones coalesce into room for the next.
ALLOCATE = """
import resource, sys
from smallvision import heap
if sys.argv[1] == "keep":
    assert heap.keep_freed_memory()
import torch
faults = []
for _ in range(30):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = torch.empty(64 << 20, dtype=torch.uint8)
    block.fill_(1)
    del block
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sum(faults[-10:]))
"""


@pytest.mark.skipif(heap.glibc() is None, reason="not glibc: its heap has nothing of this to set")
def test_a_kept_heap_serves_the_next_batch_without_faulting_its_pages_in_again():
    faults = {how: int(subprocess.run([sys.executable, "-c", ALLOCATE, how], capture_output=True, text=True,
                                      check=True).stdout) for how in ("keep", "default")}
    pages = 64 << 20 >> 12
    assert faults["default"] > 8 * pages  # the last ten blocks each faulted in afresh
    assert faults["keep"] < pages  # the last ten reused the heap's pages


def test_the_command_keeps_its_heap_and_a_callers_process_is_left_alone(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(heap, "keep_freed_memory", lambda: calls.append(1))
    assert cli.main(["recipes"]) == 0  # called from Python: the caller's process
    assert calls == []
    monkeypatch.setattr(sys, "argv", ["smallvision", "recipes"])
    assert cli.main() == 0  # the command itself
    assert calls == [1]
