"""Start a plan's training job on a real engine: torchrun on this machine, Slurm, or Kubernetes.

`request` checks what is asked (plan against model, nodes × workers against the plan, time, partition, names);
`local`, `slurm` and `kubernetes` turn the same request into a torchrun command, an sbatch script, or manifests;
`registry` remembers which run directory a submitted job writes to. No torch here: workers import it.
"""
