// Command gosql opens the volume "main" of a running Borealis cluster as its
// writer, in this process, through database/sql, and writes and reads a
// table. Run a cluster with `go run ./cmd/borealis up` (and stop its own
// writer, `up`'s "writer" process, or this one waits for its lease), then:
//
//	go run ./examples/gosql --control 127.0.0.1:7100
package main

import (
	"database/sql"
	"flag"
	"fmt"
	"log"

	_ "github.com/ncruces/go-sqlite3/driver" // the "sqlite3" database/sql driver

	"github.com/borealis-db/borealis"
)

func main() {
	control := flag.String("control", "127.0.0.1:7100", "control plane address")
	volume := flag.String("volume", "main", "volume name")
	flag.Parse()

	// The first connection takes the writer lease, bumps the volume epoch
	// and runs crash recovery; a COMMIT returns once it is durable on 4 of 6
	// segments of every PG it touched.
	db, err := sql.Open("sqlite3", borealis.DSN(*control, *volume))
	if err != nil {
		log.Fatal(err)
	}
	defer borealis.Close(*control, *volume)
	defer db.Close()

	if _, err := db.Exec(`CREATE TABLE IF NOT EXISTS greetings(id INTEGER PRIMARY KEY, text TEXT)`); err != nil {
		log.Fatal(err)
	}
	tx, err := db.Begin()
	if err != nil {
		log.Fatal(err)
	}
	for _, g := range []string{"hello", "from", "Borealis"} {
		if _, err := tx.Exec(`INSERT INTO greetings(text) VALUES(?)`, g); err != nil {
			log.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		log.Fatal(err)
	}
	// Read-only connections read at the volume durable LSN: every
	// acknowledged commit, never one that is not durable, never waiting.
	rdb, err := sql.Open("sqlite3", borealis.ReaderDSN(*control, *volume))
	if err != nil {
		log.Fatal(err)
	}
	defer rdb.Close()
	var n int
	if err := rdb.QueryRow(`SELECT count(*) FROM greetings`).Scan(&n); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("greetings: %d rows\n", n)
}
