/// `POST /restart`: a daemon whose mount and cache systemd keeps (its file descriptor store) stops
/// reading the kernel's queue, lets what it read be answered, stops loads, and exits for systemd to
/// start it again (Restart=on-failure), with the binary and settings installed now. The answer comes
/// before it exits.
public struct RestartAnswer: Codable, Sendable {
    /// The daemon that is about to exit.
    public var pid: Int32

    public init(pid: Int32) { self.pid = pid }
}
