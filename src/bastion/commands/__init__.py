"""Command families of the CLI; each module registers its commands on `bastion.cli.app`."""
