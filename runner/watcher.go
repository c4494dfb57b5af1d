package runner

import (
	"errors"
	"sync"

	"github.com/fsnotify/fsnotify"
)

// Watcher reports that something happened to a name in a watched
// directory. The mirror never trusts what happened: it looks at the file.
type Watcher interface {
	// Add starts watching dir (not recursively). Adding a watched
	// directory again is not an error.
	Add(dir string) error
	// Events delivers the full path of each name that changed, in the
	// order the changes happened.
	Events() <-chan string
	// Overflow signals that events were lost: the mirror rescans.
	Overflow() <-chan struct{}
	// Errors delivers other watcher errors, which the mirror logs.
	Errors() <-chan error
	// Close stops the watcher.
	Close() error
}

// fsnotifyWatcher is Watcher on inotify through fsnotify.
type fsnotifyWatcher struct {
	w        *fsnotify.Watcher
	events   chan string
	overflow chan struct{}
	errors   chan error
	done     chan struct{}
	once     sync.Once
	wg       sync.WaitGroup
}

// NewFSNotifyWatcher returns a Watcher on the operating system's file
// notifications.
func NewFSNotifyWatcher() (Watcher, error) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, err
	}
	fw := &fsnotifyWatcher{
		w:        w,
		events:   make(chan string, 1024),
		overflow: make(chan struct{}, 1),
		errors:   make(chan error, 16),
		done:     make(chan struct{}),
	}
	fw.wg.Add(1)
	go fw.pump()
	return fw, nil
}

func (fw *fsnotifyWatcher) pump() {
	defer fw.wg.Done()
	for {
		select {
		case ev, ok := <-fw.w.Events:
			if !ok {
				return
			}
			select {
			case fw.events <- ev.Name:
			case <-fw.done:
				return
			}
		case err, ok := <-fw.w.Errors:
			if !ok {
				return
			}
			if errors.Is(err, fsnotify.ErrEventOverflow) {
				select {
				case fw.overflow <- struct{}{}:
				default:
				}
				continue
			}
			select {
			case fw.errors <- err:
			default:
			}
		case <-fw.done:
			return
		}
	}
}

// Add implements Watcher.
func (fw *fsnotifyWatcher) Add(dir string) error { return fw.w.Add(dir) }

// Events implements Watcher.
func (fw *fsnotifyWatcher) Events() <-chan string { return fw.events }

// Overflow implements Watcher.
func (fw *fsnotifyWatcher) Overflow() <-chan struct{} { return fw.overflow }

// Errors implements Watcher.
func (fw *fsnotifyWatcher) Errors() <-chan error { return fw.errors }

// Close implements Watcher.
func (fw *fsnotifyWatcher) Close() error {
	var err error
	fw.once.Do(func() {
		close(fw.done)
		err = fw.w.Close()
		fw.wg.Wait()
	})
	return err
}
