import FuzzSupport
import TunnelCore

runFuzzer { data, size in
    0
}
