// Command ferretdb serves the MongoDB wire protocol for the local stack: FerretDB 1.24 on
// PostgreSQL, through FerretDB's embeddable package.
//
// Why a wrapper instead of `go install .../cmd/ferretdb`: that binary panics at start because a
// generated version file is missing from the published module (FerretDB issue 2982); the
// embeddable package needs none of it. Built by deploy/local (services.sh, install_mongo) into
// ~/.cache/chat-platform; nothing here is FerretDB's own code.
package main

import (
	"context"
	"flag"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/FerretDB/FerretDB/ferretdb"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:27017", "TCP address for the MongoDB wire protocol")
	pgURL := flag.String("postgresql-url", "", "PostgreSQL URL of FerretDB's database (pool size: pool_max_conns)")
	logLevel := flag.String("log-level", "warn", "debug, info, warn or error")
	flag.Parse()

	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		slog.Error("bad -log-level", "error", err)
		os.Exit(2)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	f, err := ferretdb.New(&ferretdb.Config{
		Listener:      ferretdb.ListenerConfig{TCP: *listen},
		Logger:        logger,
		Handler:       "postgresql",
		PostgreSQLURL: *pgURL,
	})
	if err != nil {
		logger.Error("cannot start", "error", err)
		os.Exit(1)
	}

	// SIGTERM closes the listener and every connection, then the PostgreSQL pool.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	logger.Warn("serving the MongoDB wire protocol", "listen", *listen)
	if err := f.Run(ctx); err != nil {
		logger.Error("stopped with an error", "error", err)
		os.Exit(1)
	}
	logger.Warn("stopped")
}
