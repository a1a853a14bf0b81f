import Glibc

/// A system call failed with an errno that is neither EINTR (retried) nor would-block (a value).
///
/// `call` names what failed ("sendmmsg", "tunctl_tun_open", "setsockopt(SO_RCVBUF)") so that the
/// one line a person reads says which operation to look at.
public struct SystemError: Error, Hashable, Sendable, CustomStringConvertible {
    public let call: String
    public let errno: Int32

    public init(call: String, errno: Int32) {
        self.call = call
        self.errno = errno
    }

    public var description: String {
        "\(call) failed: \(SystemError.message(for: errno)) (errno \(errno))"
    }

    /// The C library's text for `code`, via the thread-safe XSI `strerror_r`.
    static func message(for code: Int32) -> String {
        withUnsafeTemporaryAllocation(of: CChar.self, capacity: 128) { buffer in
            // Sound: the buffer is 128 bytes and strerror_r is told so; it NUL-terminates on success.
            guard let base = buffer.baseAddress, strerror_r(code, base, buffer.count) == 0 else {
                return "unknown error \(code)"
            }
            return String(cString: base)
        }
    }
}

/// The outcome of an operation on a non-blocking descriptor: it completed, or it would block.
public enum IOResult<Value> {
    case done(Value)
    case wouldBlock

    /// The value, or nil when the call would have blocked.
    public var value: Value? {
        switch self {
        case .done(let value): return value
        case .wouldBlock: return nil
        }
    }
}

extension IOResult: Sendable where Value: Sendable {}
extension IOResult: Equatable where Value: Equatable {}

/// The one way TunnelIO calls into the kernel.
///
/// Every variant retries EINTR, throws `SystemError` for ordinary failures, and stops the process
/// on EBADF or EFAULT: those mean a descriptor was used after close, or a bad pointer was passed,
/// which is a bug in tunctl and not a condition to recover from.
///
/// Two return conventions are covered: libc's (-1 and `errno`) and the shim's (`-errno`).
/// `io` variants return would-block (EAGAIN/EWOULDBLOCK) as `.wouldBlock`; `check` variants are for
/// calls that never legitimately block (socket, bind, setsockopt, ioctl) and throw it instead.
public enum Syscall {
    /// A libc call on a non-blocking descriptor: -1 and `errno` on failure.
    public static func io<T: FixedWidthInteger & SignedInteger>(
        _ call: String, _ body: () -> T
    ) throws(SystemError) -> IOResult<T> {
        while true {
            let result = body()
            if result != -1 { return .done(result) }
            switch classify(call, Glibc.errno) {
            case .retry: continue
            case .wouldBlock: return .wouldBlock
            case .failed(let error): throw error
            }
        }
    }

    /// A libc call that is not expected to block: -1 and `errno` on failure; EAGAIN is an error.
    public static func check<T: FixedWidthInteger & SignedInteger>(
        _ call: String, _ body: () -> T
    ) throws(SystemError) -> T {
        while true {
            let result = body()
            if result != -1 { return result }
            switch classify(call, Glibc.errno) {
            case .retry: continue
            case .wouldBlock(let code): throw SystemError(call: call, errno: code)
            case .failed(let error): throw error
            }
        }
    }

    /// A `tunctl_` shim call on a non-blocking descriptor: a negative errno on failure.
    public static func shimIO<T: FixedWidthInteger & SignedInteger>(
        _ call: String, _ body: () -> T
    ) throws(SystemError) -> IOResult<T> {
        while true {
            let result = body()
            if result >= 0 { return .done(result) }
            switch classify(call, Int32(truncatingIfNeeded: -result)) {
            case .retry: continue
            case .wouldBlock: return .wouldBlock
            case .failed(let error): throw error
            }
        }
    }

    /// A `tunctl_` shim call that is not expected to block: a negative errno on failure.
    public static func shimCheck<T: FixedWidthInteger & SignedInteger>(
        _ call: String, _ body: () -> T
    ) throws(SystemError) -> T {
        while true {
            let result = body()
            if result >= 0 { return result }
            switch classify(call, Int32(truncatingIfNeeded: -result)) {
            case .retry: continue
            case .wouldBlock(let code): throw SystemError(call: call, errno: code)
            case .failed(let error): throw error
            }
        }
    }

    /// Waits up to `milliseconds` (-1: without limit) for `fd` to become readable, unless `wake`
    /// is or becomes readable first (a negative `wake` is ignored, as poll ignores it). True only
    /// when `fd` is readable and `wake` is not; false on timeout, on a wake-up, on a signal and on
    /// any error (the caller then returns to its event source, which reports what is wrong).
    public static func waitReadable(_ fd: Int32, unlessReadable wake: Int32, milliseconds: Int32) -> Bool {
        var entries = (
            pollfd(fd: fd, events: Int16(POLLIN), revents: 0), pollfd(fd: wake, events: Int16(POLLIN), revents: 0)
        )
        // Sound: the tuple is two contiguous, homogeneous `pollfd`s, which is the array poll reads.
        let ready = withUnsafeMutableBytes(of: &entries) { bytes in
            poll(bytes.baseAddress?.assumingMemoryBound(to: pollfd.self), 2, milliseconds)
        }
        return ready > 0 && entries.1.revents == 0 && entries.0.revents & Int16(POLLIN) != 0
    }

    /// Closes `fd` exactly once. EINTR is not retried: Linux releases the descriptor before it
    /// reports EINTR, so a retry could close a descriptor another thread has just been given.
    public static func close(_ fd: Int32) throws(SystemError) {
        guard Glibc.close(fd) == -1 else { return }
        let code = Glibc.errno
        if code == EINTR { return }
        if case .failed(let error) = classify("close", code) { throw error }
        throw SystemError(call: "close", errno: code)
    }

    private enum Classification {
        case retry
        case wouldBlock(Int32)
        case failed(SystemError)
    }

    private static func classify(_ call: String, _ code: Int32) -> Classification {
        switch code {
        case EINTR:
            return .retry
        case EAGAIN, EWOULDBLOCK:
            return .wouldBlock(code)
        case EBADF:
            preconditionFailure("\(call): EBADF, a descriptor was used after close or never opened")
        case EFAULT:
            preconditionFailure("\(call): EFAULT, a buffer pointer handed to the kernel is invalid")
        default:
            return .failed(SystemError(call: call, errno: code))
        }
    }
}
