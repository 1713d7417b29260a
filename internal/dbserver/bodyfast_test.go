package dbserver

import (
	"reflect"
	"testing"
)

var bodySeeds = []string{
	`{"statements":[{"sql":"INSERT INTO t VALUES (?, ?)","params":[1,"x"]}],"transaction":true}`,
	` { "statements" : [ { "sql" : "SELECT 1" } , {"params": [], "sql": "a\"b\u00e9"} ] , "transaction" : false } `,
	`{"statements":[]}`, `{}`, `{"transaction":true}`,
	`{"statements":[{"sql":"x","params":[null,true,false,2.5,-0.0,1e3,9223372036854775808,{"base64":"AAE="},{"real":"Infinity"},[1],{"x":1}]}]}`,
	`{"Statements":[{"sql":"x"}]}`, `{"statements":[{"SQL":"x"}]}`, `{"statements":[{"sql":"x","sql":"y"}]}`,
	`{"statements":null}`, `{"statements":[null]}`, `{"statements":[{"sql":null}]}`, `{"statements":[{"sql":5}]}`,
	`{"statements":[{"sql":"x","params":null}]}`, `{"statements":[{"sql":"x"}],"transaction":"yes"}`,
	`{"statements":[{"sql":"x"}],"transation":true}`, `{"statements":[{"sql":"x"}]} {}`, `{"statements":[{"sql":"x"}]`,
	`[]`, `"x"`, `{"statements":[{"sql":"\xff"}]}`,
	`{"sql":"SELECT ?","params":[1]}`, `{"sql":"SELECT 1","min_lsn":42}`, `{"sql":"SELECT 1","min_lsn":-1}`,
	`{"sql":"SELECT 1","min_lsn":1.5}`, `{"sql":"SELECT 1","min_lsn":18446744073709551616}`, `{"sql":"x","min_lsn":1,"min_lsn":2}`,
	`{"sql":"x","Min_LSN":1}`, `{"sql":"x","statements":[]}`,
}

// The fast decoder decodes a body to what encoding/json decodes it to, or
// leaves it to encoding/json: it never accepts a body the slow path refuses,
// nor reads one differently.
func checkDecodeFast(t *testing.T, body []byte) {
	for _, mk := range []func() (any, any){
		func() (any, any) { return new(executeBody), new(executeBody) },
		func() (any, any) { return new(queryBody), new(queryBody) },
	} {
		fast, slow := mk()
		if !decodeFast(body, fast) {
			continue
		}
		if err := decodeSlow(body, slow); err != nil {
			t.Fatalf("%s: the fast decoder took it as %T, encoding/json refuses it: %v", body, fast, err)
		}
		if !reflect.DeepEqual(fast, slow) {
			t.Fatalf("%s as %T: fast %#v\nencoding/json %#v", body, fast, fast, slow)
		}
	}
}

func TestDecodeFastAgreesWithEncodingJSON(t *testing.T) {
	took := 0
	for _, b := range bodySeeds {
		checkDecodeFast(t, []byte(b))
		if decodeFast([]byte(b), new(executeBody)) || decodeFast([]byte(b), new(queryBody)) {
			took++
		}
	}
	if took < 6 {
		t.Fatalf("the fast decoder took only %d of the bodies", took)
	}
}

func FuzzDecodeFast(f *testing.F) {
	for _, b := range bodySeeds {
		f.Add([]byte(b))
	}
	f.Fuzz(checkDecodeFast)
}
