package cli

import (
	"context"
	"fmt"
	"io"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/orchestrix/orchestrix/internal/flagenv"
	"github.com/orchestrix/orchestrix/stores/postgres"
)

func runMigrate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flags("migrate", stderr)
	url := urlFlag(fs, "database-url", flagenv.Or("DATABASE_URL", ""), "PostgreSQL `URL` (env DATABASE_URL)")
	schema := fs.String("schema", flagenv.Or("ORCHESTRIX_SCHEMA", postgres.DefaultSchema), "schema holding the tables (env ORCHESTRIX_SCHEMA)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *url == "" {
		return fmt.Errorf("%w: --database-url or DATABASE_URL is required", errUsage)
	}
	pool, err := openPool(ctx, *url)
	if err != nil {
		return err
	}
	defer pool.Close()
	applied, err := postgres.Migrate(ctx, pool, *schema)
	if err != nil {
		return err
	}
	if len(applied) == 0 {
		fmt.Fprintf(stdout, "schema %q is up to date\n", *schema)
		return nil
	}
	fmt.Fprintf(stdout, "schema %q: applied migrations %v\n", *schema, applied)
	return nil
}

func openPool(ctx context.Context, url string) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("%w: database url: %w", errUsage, err)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to PostgreSQL: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connect to PostgreSQL at %s:%d: %w", cfg.ConnConfig.Host, cfg.ConnConfig.Port, err)
	}
	return pool, nil
}
