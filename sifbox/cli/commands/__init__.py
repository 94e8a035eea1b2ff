"""The command table: every command of the CLI, with Apptainer's names.

Each built command lives in a module `sifbox.cli.commands.<module>` with
`add_arguments(parser)` and `main(args) -> int`. Modules are imported only
for the command being run (or for completion), so start-up stays fast.
Commands whose module is None are not available yet: they say so.
"""

from __future__ import annotations


class Command:
    """One command: its name, one-line help, module (None: not available yet)."""

    __slots__ = ("aliases", "help", "module", "name")

    def __init__(self, name: str, help: str, module: str | None = None, aliases: tuple[str, ...] = ()):
        self.name = name
        self.help = help
        self.module = module
        self.aliases = aliases


COMMANDS: tuple[Command, ...] = (
    Command("build", "Build an image from a definition file or another image", "build"),
    Command("exec", "Run a command within a container", "action"),
    Command("run", "Run the user-defined default command within a container", "action"),
    Command("shell", "Run a shell within a container", "action"),
    Command("test", "Run the user-defined tests within a container", "action"),
    Command("run-help", "Show the user-defined help for an image", "run_help"),
    Command("inspect", "Show metadata for an image", "inspect"),
    Command("pull", "Pull an image from a URI", "pull"),
    Command("push", "Upload an image to a registry", "push"),
    Command("sign", "Add digital signature(s) to an image", "sign"),
    Command("verify", "Verify digital signature(s) within an image", "verify"),
    Command("key", "Manage OpenPGP keys", "key", ("keys",)),
    Command("ecl", "Check images against the execution control list (ecl.toml)", "ecl"),
    Command("instance", "Manage containers running as services", "instance"),
    Command("overlay", "Manage an EXT3 writable overlay image", "overlay"),
    Command("mounts", "List or prune the node's shared image mounts", "mounts"),
    Command("sif", "Manipulate Singularity Image Format (SIF) images", "sif", ("siftool",)),
    Command("cache", "Manage the local cache", "cache"),
    Command("config", "Check the site configuration (sifbox.conf) in force", "config"),
    Command("capability", "Manage Linux capabilities for users and groups", "capability", ("caps",)),
    Command("oci", "Run OCI runtime bundles with runc's command line (create, start, state, kill, delete...)", "oci"),
    Command("remote", "Manage sifbox remote endpoints", "remote"),
    Command("registry", "Manage authentication to OCI/Docker registries", "registry"),
    Command("keyserver", "Manage sifbox keyservers", "keyserver"),
    Command("plugin", "Manage sifbox plugins"),
    Command("delete", "Delete a remote image"),
    Command("search", "Search a library for images"),
    Command("checkpoint", "Manage container checkpoint state"),
    Command("store", "Admit images into the site's image store (scan, record SBOM)", "store"),
    Command("sbom", "Generate or show the software bill of materials of an image", "sbom"),
    Command("scan", "Scan an image for known vulnerabilities (offline OSV database)", "scan"),
    Command("doctor", "Check that this machine can run sifbox containers", "doctor"),
    Command("completion", "Generate the autocompletion script for the specified shell", "completion"),
    Command("version", "Show the version for sifbox", "version"),
    Command("help", "Help about any command", "help"),
)

BY_NAME: dict[str, Command] = {}
for _cmd in COMMANDS:
    BY_NAME[_cmd.name] = _cmd
    for _alias in _cmd.aliases:
        BY_NAME[_alias] = _cmd
