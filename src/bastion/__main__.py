"""`python -m bastion ...` — the same CLI; torchrun (here, under srun, in a pod) starts each worker as `-m bastion
_worker RUN_CONFIG` (launch/worker.py)."""

from bastion.cli import main

main()
