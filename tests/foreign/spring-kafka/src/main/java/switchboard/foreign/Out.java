package switchboard.foreign;

import java.util.Map;

import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.ObjectMapper;

/** Writes one JSON object per line on stdout, flushed at once, for the test that reads it. */
final class Out {
    private static final ObjectMapper JSON = new ObjectMapper();

    private Out() {
    }

    static synchronized void line(Map<String, ?> fields) {
        try {
            System.out.println(JSON.writeValueAsString(fields));
        } catch (JsonProcessingException e) {
            throw new IllegalStateException(e);
        }
        System.out.flush();
    }

    static synchronized void text(String line) {
        System.out.println(line);
        System.out.flush();
    }
}
