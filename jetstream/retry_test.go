package jetstream_test

import (
	"context"
	"errors"
	"testing"
	"time"

	kbjs "github.com/kernelbus/kernelbus/jetstream"
)

func TestRetry(t *testing.T) {
	ctx := context.Background()
	busy, gone := errors.New("no leader"), errors.New("no such thing")
	tries := 0
	err := kbjs.Retry(ctx, time.Minute, func() error {
		if tries++; tries < 3 {
			return busy
		}
		return nil
	}, nil, nil)
	if err != nil || tries != 3 {
		t.Fatalf("transient failures: %v after %d tries, want success on the 3rd", err, tries)
	}
	tries = 0
	err = kbjs.Retry(ctx, time.Minute, func() error { tries++; return gone }, func(err error) bool { return errors.Is(err, gone) }, nil)
	if !errors.Is(err, gone) || tries != 1 {
		t.Fatalf("final error: %v after %d tries, want it at once", err, tries)
	}
	tries = 0
	err = kbjs.Retry(ctx, 250*time.Millisecond, func() error { tries++; return busy }, nil, nil)
	if !errors.Is(err, busy) || tries < 2 || tries > 3 {
		t.Fatalf("window: %v after %d tries, want the last error after 2-3 tries", err, tries)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := kbjs.Retry(cctx, time.Minute, func() error { return busy }, nil, nil); !errors.Is(err, busy) {
		t.Fatalf("cancelled: %v, want the last error", err)
	}
}
