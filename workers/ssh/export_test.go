package ssh

// Dials reports how many SSH connections the backend has made, so tests can
// check that connections are reused.
func (b *Backend) Dials() int { return b.conns.dialCount() }
