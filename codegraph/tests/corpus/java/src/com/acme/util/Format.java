package com.acme.util;

public class Format {
    public static String number(double d) {
        return pad(String.format("%.2f", d));
    }

    private static String pad(String s) {
        return " " + s;
    }
}
