package main

import (
	"bufio"
	"bytes"
	"io"
	"sync"
	"time"
)

// logBuffer batches log lines into one write per flush instead of one
// write system call per line: under load the access log is a line per
// request. Lines reach the sink within flushEvery; a warning or error is
// flushed at once; Stop flushes and writes through from then on. It is
// safe for concurrent use.
type logBuffer struct {
	mu     sync.Mutex
	w      *bufio.Writer
	direct bool // after Stop

	stop chan struct{}
	done chan struct{}
	once sync.Once
}

const logFlushEvery = 100 * time.Millisecond

func newLogBuffer(sink io.Writer) *logBuffer {
	b := &logBuffer{w: bufio.NewWriterSize(sink, 64<<10), stop: make(chan struct{}), done: make(chan struct{})}
	go b.flusher()
	return b
}

var urgent = [][]byte{[]byte(`"level":"WARN"`), []byte(`"level":"ERROR"`)}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n, err := b.w.Write(p)
	if err == nil && (b.direct || bytes.Contains(p, urgent[0]) || bytes.Contains(p, urgent[1])) {
		err = b.w.Flush()
	}
	return n, err
}

func (b *logBuffer) flusher() {
	defer close(b.done)
	t := time.NewTicker(logFlushEvery)
	defer t.Stop()
	for {
		select {
		case <-b.stop:
			return
		case <-t.C:
			b.mu.Lock()
			_ = b.w.Flush()
			b.mu.Unlock()
		}
	}
}

// Stop flushes and makes every later write go straight through.
func (b *logBuffer) Stop() {
	b.once.Do(func() {
		close(b.stop)
		<-b.done
		b.mu.Lock()
		b.direct = true
		_ = b.w.Flush()
		b.mu.Unlock()
	})
}
