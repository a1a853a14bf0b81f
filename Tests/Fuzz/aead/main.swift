import FuzzSupport
import TunnelCrypto

runFuzzer { data, size in
    0
}
