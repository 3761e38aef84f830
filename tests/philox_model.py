"""A pure-Python model of the samplers' random stream (csrc/include/noisy/philox.h), so the
tests can predict the kernels' draws exactly."""
M0, M1, W0, W1 = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85
MASK = 0xFFFFFFFF


def philox4x32_10(counter, key):
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(10):
        p0, p1 = M0 * c0, M1 * c2
        c0, c1, c2, c3 = ((p1 >> 32) ^ c1 ^ k0), p1 & MASK, ((p0 >> 32) ^ c3 ^ k1), p0 & MASK
        k0, k1 = (k0 + W0) & MASK, (k1 + W1) & MASK
    return [c0, c1, c2, c3]


class Stream:
    """PhiloxStream(seed, offset, row): 32-bit words, counter (block, row, offset lo, offset hi)."""

    def __init__(self, seed, offset, row):
        seed &= (1 << 64) - 1
        offset &= (1 << 64) - 1
        self.key = (seed & MASK, seed >> 32)
        self.counter = [0, row & MASK, offset & MASK, offset >> 32]
        self.words = []

    def next_u32(self):
        if not self.words:
            self.words = philox4x32_10(self.counter, self.key)
            self.counter[0] += 1
        return self.words.pop(0)

    def below(self, n):
        m = self.next_u32() * n
        if (m & MASK) < n:
            threshold = (-n % (1 << 32)) % n
            while (m & MASK) < threshold:
                m = self.next_u32() * n
        return m >> 32

    def uniform(self):
        return (self.next_u32() >> 8) / 16777216.0
