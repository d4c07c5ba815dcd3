"""`python -m bastion ...` — the same CLI; torchrun/srun start workers as `torchrun ... -m bastion train ...`."""

from bastion.cli import main

main()
