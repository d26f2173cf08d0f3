package sagas

// SetCrashAt makes s call f at each crash point of its transactions (see
// PostgresStore.crashAt), for the kill tests of package sagas_test.
func SetCrashAt(s *PostgresStore, f func(point string) error) { s.crashAt = f }
