package cli

import (
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"time"
)

// progress draws a bar with the count and rate of done out of total on w,
// every 200ms, until the returned stop is called (which draws it once more
// and ends the line).
func progress(w io.Writer, unit string, total int64, done *atomic.Int64, start time.Time) func() {
	draw := func() {
		n := done.Load()
		const width = 40
		fill := int(width * min(n, total) / max(total, 1))
		rate := float64(n) / max(time.Since(start).Seconds(), 1e-3)
		fmt.Fprintf(w, "\r[%s%s] %d/%d %s %6.0f/s", strings.Repeat("#", fill), strings.Repeat(".", width-fill), n, total, unit, rate)
	}
	return redraw(w, 200*time.Millisecond, draw)
}

// redraw calls draw on w every interval until the returned stop is
// called, which draws once more and ends the line.
func redraw(w io.Writer, every time.Duration, draw func()) func() {
	quit, finished := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-quit:
				draw()
				fmt.Fprintln(w)
				return
			case <-t.C:
				draw()
			}
		}
	}()
	return func() { close(quit); <-finished }
}
