package main

import (
	"strings"
	"testing"
	"time"

	"github.com/tokenpool/tokenpool/internal/poll"
)

func TestLogBuffer(t *testing.T) {
	var sink syncBuffer
	b := newLogBuffer(&sink)
	b.Write([]byte(`{"level":"INFO","msg":"a"}` + "\n"))
	if sink.String() != "" {
		t.Fatal("an info line went straight through")
	}
	poll.Until(t, "the periodic flush", time.Second, func() bool { return strings.Contains(sink.String(), `"msg":"a"`) })
	b.Write([]byte(`{"level":"ERROR","msg":"b"}` + "\n"))
	if !strings.Contains(sink.String(), `"msg":"b"`) {
		t.Fatal("an error line was held back")
	}
	b.Write([]byte(`{"level":"INFO","msg":"c"}` + "\n"))
	b.Stop()
	b.Write([]byte(`{"level":"INFO","msg":"d"}` + "\n"))
	if !strings.Contains(sink.String(), `"msg":"c"`) || !strings.Contains(sink.String(), `"msg":"d"`) {
		t.Fatalf("lines lost at stop: %q", sink.String())
	}
}
