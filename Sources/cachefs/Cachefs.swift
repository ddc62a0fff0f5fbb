import ArgumentParser

struct Cachefs: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cachefs",
        abstract: "Mirror a slow directory read-only and serve its files from a bounded in-memory block cache.",
        discussion: """
            Examples:
              cachefs /data-slow /data-fast --capacity 20G
              cachefs /mnt/oss/models /models --capacity 64GiB --allow-other -f
              cachefs stats /data-fast
              cachefs ls /data-fast/models
              cachefs warm /data-fast/models/base.safetensors --pin
              fusermount3 -u /data-fast
            """,
        subcommands: [
            MountCommand.self, StatsCommand.self, ListCommand.self, WarmCommand.self, UnpinCommand.self, RestartCommand.self,
            ServeCommand.self, KeepMountCommand.self, HandedOverCommand.self,
        ],
        defaultSubcommand: MountCommand.self
    )
}
