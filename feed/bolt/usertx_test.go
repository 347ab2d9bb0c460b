package bolt

import (
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"go.etcd.io/bbolt"
)

// userTx counts the user's tasks whatever the order of its calls: what it
// remembers of a read never stands in for a change since.
func TestUserTxCountsTasks(t *testing.T) {
	db, err := bbolt.Open(filepath.Join(t.TempDir(), "k.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rnd := rand.New(rand.NewPCG(1, 2))
	err = db.Update(func(tx *bbolt.Tx) error {
		b, err := tx.CreateBucket([]byte("tasks"))
		if err != nil {
			return err
		}
		u := &userTx{rec: &userRecord{}, tasks: b}
		for i := range 5000 {
			id := rnd.Int64N(6)
			switch rnd.IntN(3) {
			case 0:
				_, _, err = u.Get(id)
			case 1:
				err = u.Put(id, []byte(`{}`))
			case 2:
				err = u.Delete(id)
			}
			if err != nil {
				return err
			}
			n := 0
			b.ForEach(func(_, _ []byte) error { n++; return nil })
			if u.rec.Tasks != n {
				return fmt.Errorf("after %d calls: count %d, %d tasks", i+1, u.rec.Tasks, n)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
