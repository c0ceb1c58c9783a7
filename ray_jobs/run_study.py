"""Entrypoint of a study submitted to a running Ray cluster (see ray_jobs/submit.sh).

The job's driver runs on the cluster; trajectories are scheduled on its nodes. `--out` must be
on storage every node sees (a shared filesystem), since each trajectory writes its own files.
Arguments are those of `biasamp run`.
"""

import sys

from biasamp.cli import cli

if __name__ == "__main__":
    # Join the cluster this job runs in instead of starting a private local Ray. Through `cli`, as the
    # `biasamp` command: `ray job stop` sends SIGTERM, which then ends the run in one line after its
    # placement groups are removed (the default action killed the driver on the spot).
    sys.argv = ["biasamp", "run", *sys.argv[1:], "--set", "resources.ray_address=auto"]
    cli()
