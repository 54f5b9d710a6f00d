package com.acme.shapes;

class Format {
    static String number(double d) {
        return String.valueOf(d);
    }
}
