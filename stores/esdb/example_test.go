package esdb_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/esdb"
	"github.com/orchestrix/orchestrix/stores/esdb/esdbtest"
)

func ExampleStore() {
	srv := esdbtest.NewServer("secret") // or a real server's URL
	defer srv.Close()
	client, err := esdb.NewClient(srv.URL, "secret")
	if err != nil {
		log.Fatal(err)
	}
	store, err := esdb.New(client, esdb.WithSubjectPrefix("/banking"))
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	deposited := orchestrix.Event{
		Metadata:    orchestrix.Metadata{Type: "banking.Deposited", Source: "/banking"},
		CommandID:   "cmd-1",
		ContentType: "application/json",
		Data:        []byte(`{"amount":10}`),
	}
	res, _ := store.Append(ctx, "acct-1", stores.NoStream, []orchestrix.Event{deposited})
	again, _ := store.Append(ctx, "acct-1", stores.NoStream, []orchestrix.Event{deposited})
	fmt.Println(store.StreamSubject("acct-1"), res.ToVersion, again.Duplicate)
	for e, err := range store.ReadStream(ctx, "acct-1", 0) {
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(e.Version, e.Position, e.Type, string(e.Data))
	}
	// Output:
	// /banking/streams/acct-1 1 true
	// 1 1 banking.Deposited {"amount":10}
}

func ExampleClient_WriteEvents() {
	srv := esdbtest.NewServer("secret")
	defer srv.Close()
	client, _ := esdb.NewClient(srv.URL, "secret")
	ctx := context.Background()
	acquired := esdb.EventCandidate{
		Source:  "https://library.example.com",
		Subject: "/books/42",
		Type:    "io.example.library.book-acquired",
		Data:    json.RawMessage(`{"title":"2001"}`),
	}
	written, err := client.WriteEvents(ctx, []esdb.EventCandidate{acquired}, esdb.IsSubjectPristine("/books/42"))
	fmt.Println(written[0].ID, err)
	_, err = client.WriteEvents(ctx, []esdb.EventCandidate{acquired}, esdb.IsSubjectPristine("/books/42"))
	fmt.Println(errors.Is(err, esdb.ErrPreconditionFailed))
	// Output:
	// 0 <nil>
	// true
}
