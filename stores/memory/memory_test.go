package memory_test

import (
	"testing"

	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/memory"
	"github.com/orchestrix/orchestrix/stores/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) stores.EventStore { return memory.New() })
}
